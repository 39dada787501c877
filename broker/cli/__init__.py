"""The ``broker`` command (``broker.entry`` runs it; ``python -m broker.cli`` too).

- ``root``: the Typer app and the order of its groups;
- ``options``: the shared ``--config`` option, its loading, the operator options and the services a command
  builds (``broker.services``);
- one module per command group: ``server`` (serve, config, db, hash-password, scim), ``audit``, ``admin``
  (requests, revoke, principals, sessions, issuances, access-report, sweep), ``mfa``, ``policy``, ``dev``.

The credential helper's commands live in ``broker.client.commands``, which imports only ``broker.client``.
"""

from __future__ import annotations

from broker.cli.root import app, main

__all__ = ["app", "main"]
