"""``broker dev`` and ``broker dev-token``: the whole broker offline, and workload tokens to try it with."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

out = Console()
err = Console(stderr=True)


def dev(
    port: Annotated[int, typer.Option(help="Port for the broker.")] = 8000,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Folder for the demo account and keys [default: var/dev]; also holds the database if set."),
    ] = None,
    config: Annotated[Path, typer.Option(help="Dev configuration.")] = Path("config/dev.yaml"),
    with_ldap: Annotated[
        bool, typer.Option("--with-ldap", help="Also start a demo LDAP directory (Debian's slapd) to sign in with.")
    ] = False,
) -> None:
    """Run the whole broker offline: SQLite, a demo break-glass account, and a local AWS emulator."""
    from broker import devmode

    devmode.run(port=port, data_dir=data_dir, config=config, console=out, with_ldap=with_ldap)


# broker.oauth.dev_issuer.DEFAULT_SUBJECT, repeated here so `--help` need not import the JOSE stack.
DEV_WORKLOAD_SUBJECT = "system:serviceaccount:demo:deployer"


def dev_token(
    subject: Annotated[str, typer.Option(help="The workload's subject (`sub`).")] = DEV_WORKLOAD_SUBJECT,
    audience: Annotated[str, typer.Option(help="The token's audience (`aud`).")] = "broker-dev",
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 600,
    claim: Annotated[list[str] | None, typer.Option(help="Extra claim NAME=VALUE (repeatable).")] = None,
    data_dir: Annotated[Path, typer.Option(help="The dev data folder (`broker dev --data-dir`).")] = Path("var/dev"),
) -> None:
    """Print a workload token from `broker dev`'s workload issuer, for trying token exchange."""
    from broker.oauth import dev_issuer

    extra = {}
    for item in claim or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            err.print(f"--claim takes NAME=VALUE, not {item!r}", markup=False)
            raise typer.Exit(2)
        extra[name] = value
    try:
        token = dev_issuer.mint(data_dir, subject=subject, audience=audience, ttl_seconds=ttl, claims=extra)
    except FileNotFoundError as exc:
        err.print(str(exc), markup=False)
        raise typer.Exit(2) from None
    sys.stdout.write(token + "\n")
