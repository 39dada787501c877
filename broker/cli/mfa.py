"""``broker mfa ...``: operator commands for broker-held factors. Heavy imports happen inside the commands.

``broker mfa reset`` only *requests* a reset: it runs wherever the configuration and database are reachable,
which proves nothing about who typed it, so the reset takes effect only when an MFA operator approves it in
the browser with their own phishing-resistant sign-in (docs/mfa.md, "Operator reset").
"""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, err, operator_services

if TYPE_CHECKING:
    from broker.mfa.service import MfaService

out = Console()


def register(app: typer.Typer, *, panel: str) -> None:
    mfa_app = typer.Typer(help="Broker-held MFA factors: operator reset, key rotation.", no_args_is_help=True)
    app.add_typer(mfa_app, name="mfa", rich_help_panel=panel)

    @mfa_app.command("reset")
    def reset(
        principal: Annotated[str, typer.Option("--principal", help="Email, username, or store:subject.")],
        config: ConfigOption = DEFAULT_CONFIG,
    ) -> None:
        """Request removal of every factor and recovery code of a principal (approved in the browser)."""
        from broker.errors import BrokerError

        service = _service(config)
        try:
            pending = service.request_reset(principal, requested_by=getpass.getuser())
        except BrokerError as exc:
            err.print(exc.message, style="red", markup=False, highlight=False)
            raise typer.Exit(1) from None
        out.print(
            f"Reset of [bold]{pending.principal}[/bold] requested. It does nothing until an MFA operator opens\n"
            f"  {pending.url}\nsigned in with a security key, and approves it (within 15 minutes).",
            highlight=False,
            soft_wrap=True,
        )

    @mfa_app.command("rotate-key")
    def rotate_key(config: ConfigOption = DEFAULT_CONFIG) -> None:
        """Re-encrypt every TOTP secret under the first of mfa.encryption_keys (then drop the old keys)."""
        from broker.errors import BrokerError

        try:
            changed = _service(config).rotate_key()
        except BrokerError as exc:
            err.print(
                f"{exc.message}\nNothing was re-encrypted. Keep every key the secrets were enrolled under listed "
                "(mfa.encryption_keys, or secret_keys for the default key) until this command succeeds; "
                f"`broker keys status -c {config}` shows which key is missing.",
                style="red",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
            raise typer.Exit(1) from None
        out.print(f"Re-encrypted {changed} TOTP secret(s) under the current key.")


def _service(config: Path) -> MfaService:
    return operator_services(config).mfa
