"""The root ``broker`` command: one Typer app, each command group from its own module, in help order.

Every module imported here is light (Typer and Rich only): the server stack is imported inside the commands,
so ``broker --help`` stays fast.
"""

from __future__ import annotations

import typer

from broker.cli import admin, audit, db, dev, keys, mfa, policy, server, signing_keys
from broker.client.commands import register as register_client

SERVER = "Operate the broker (server)"
OPERATOR = "Administer access (operator)"

app = typer.Typer(
    help="Identity federation broker: short-lived AWS credentials for people and services.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
app.add_typer(server.config_app, name="config", rich_help_panel=SERVER)
app.add_typer(server.db_app, name="db", rich_help_panel=SERVER)
# Schema revisions: upgrade/downgrade --to, current, history.
db.register(server.db_app)
app.add_typer(audit.audit_app, name="audit", rich_help_panel=SERVER)
# The credential helper (broker/client): people's own machines.
register_client(app)
mfa.register(app, panel=SERVER)
# Requests, revocation, principals, sessions, issuances, access report, worker pass.
admin.register(app, panel=OPERATOR)
policy.register(app, panel=OPERATOR)
app.command("hash-password", rich_help_panel=SERVER)(server.hash_password)
app.add_typer(server.scim_app, name="scim", rich_help_panel=SERVER)
# Key rotation: the broker's token-signing keys, and the root secret keys (secret_keys) with what they protect.
signing_keys.register(app, panel=SERVER)
keys.register(app, panel=SERVER)
app.command("serve", rich_help_panel=SERVER)(server.serve)
app.command("dev", rich_help_panel=SERVER)(dev.dev)
app.command("dev-token", rich_help_panel=SERVER)(dev.dev_token)


def main() -> None:
    app()
