"""``broker keys ...``: what is stored under which key, and moving it to the newest (``broker.keyring``).

Only the command-line wiring lives here; heavy imports happen inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, err, out

if TYPE_CHECKING:
    from broker.keyring import Keyring


def register(app: typer.Typer, *, panel: str) -> None:
    keys_app = typer.Typer(
        help="Root secret keys (secret_keys) and what is stored under them: status, re-encrypt after a rotation.",
        no_args_is_help=True,
    )
    app.add_typer(keys_app, name="keys", rich_help_panel=panel)

    @keys_app.command("status")
    def status(config: ConfigOption = DEFAULT_CONFIG) -> None:
        """Show what is stored under which key; exit 1 if the configured keys cannot read something."""
        keyring = _keyring(config)
        report = keyring.report()
        table = Table("stored", "key", "count", "state")
        for usage in report.usage:
            if usage.newest:
                state = "newest"
            elif not usage.readable:
                state = "[red]unreadable[/red]"
            elif usage.movable:
                state = "to move"
            else:
                last = usage.until.strftime("%Y-%m-%d %H:%M UTC") if usage.until else "?"
                state = f"ends when its key is removed (last ends {last})"
            table.add_row(usage.what, usage.key, str(usage.count), state)
        out.print(f"Configured secret keys, newest first: {', '.join(keyring.keys.ids)}")
        out.print(table)
        for problem in report.problems:
            err.print(problem, style="red", markup=False, highlight=False, soft_wrap=True)
        if report.problems:
            raise typer.Exit(1)
        if report.to_move:
            out.print(
                f"{report.to_move} value(s) are not under the newest key: run `broker keys re-encrypt -c {config}` "
                "before removing an old key."
            )
        else:
            out.print("[green]Everything is under the newest key[/green]: older keys can be removed from secret_keys.")
        ending = sum(u.count for u in report.ending())
        if ending:
            out.print(
                f"{ending} live session(s) or CLI sign-in(s) use an older key: removing it signs them out (they can "
                "sign in again). To avoid that, keep the key listed until the times shown."
            )

    @keys_app.command("re-encrypt")
    def re_encrypt(config: ConfigOption = DEFAULT_CONFIG) -> None:
        """Re-encrypt signing keys and TOTP secrets, and re-seal the audit trail, under the newest keys."""
        from broker.errors import BrokerError

        keyring = _keyring(config)
        try:
            moved = keyring.re_encrypt()
        except BrokerError as exc:
            err.print(exc.message, style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        out.print(
            f"Under secret key {keyring.keys.current_id}: re-encrypted {moved.signing_keys} signing key(s) and "
            f"{moved.totp_factors} TOTP secret(s), re-sealed {moved.audit_events} audit event(s). Run `broker "
            f"keys status -c {config}`; once it says everything is under the newest key, older keys can go."
        )


def _keyring(config: Path) -> Keyring:
    from broker.cli.options import existing_database as _existing_database
    from broker.cli.options import load_config as _load
    from broker.keyring import Keyring
    from broker.keys import Keys
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    return Keyring(settings, db=database, keys=Keys(settings.root_keys))
