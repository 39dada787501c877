"""The ``broker`` command. Operator commands import the server stack lazily so ``--help`` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

if TYPE_CHECKING:
    from broker.settings import Settings

app = typer.Typer(
    help="Identity federation broker: short-lived AWS credentials for people and services.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the broker's database schema.", no_args_is_help=True)
audit_app = typer.Typer(help="Verify and export the hash-chained audit trail.", no_args_is_help=True)
SERVER = "Operate the broker (server)"
app.add_typer(config_app, name="config", rich_help_panel=SERVER)
app.add_typer(db_app, name="db", rich_help_panel=SERVER)
app.add_typer(audit_app, name="audit", rich_help_panel=SERVER)


def _register_client() -> None:
    from broker.client.commands import register

    register(app)


_register_client()


def _register_mfa() -> None:
    from broker.mfa.commands import register

    register(app, panel=SERVER)


_register_mfa()


def _register_admin() -> None:
    # Requests, revocation, principals, sessions, issuances, audit search, access report (issue 8).
    from broker.admin_cli import register

    register(app, audit_app, panel="Administer access (operator)")


_register_admin()

out = Console()
err = Console(stderr=True)
DEFAULT_CONFIG = "config/broker.yaml"
ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="BROKER_CONFIG", help="YAML configuration file.")]


def _load(path: Path) -> Settings:
    from broker.errors import ConfigError
    from broker.settings import load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        err.print(f"[red]Configuration {path} is not valid:[/red]")
        for where, problem in exc.problems:
            err.print(f"  [bold]{where}[/bold]: {problem}", markup=True, highlight=False)
        raise typer.Exit(2) from None


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML file to check.")] = Path(DEFAULT_CONFIG)) -> None:
    """Validate a configuration file and report every problem at once, with its YAML path."""
    settings = _load(path)
    out.print(
        f"[green]OK[/green] {path}: mode {settings.mode}, {len(settings.identity_stores)} identity "
        f"store(s), {len(settings.roles)} role(s)."
    )


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Apply database migrations up to the latest revision (safe to run repeatedly)."""
    from broker.store import db

    settings = _load(config)
    db.upgrade(settings.database_url)
    out.print(f"[green]Database at revision {', '.join(sorted(db.head_revisions()))}[/green]")


@db_app.command("purge")
def db_purge(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Delete expired replay-guard entries, sign-ins in flight and sessions (the server also does this hourly)."""
    from datetime import UTC, datetime

    from broker.store import queries
    from broker.store.db import Database

    settings = _load(config)
    database = Database(settings.database_url)
    with database.transaction() as session:
        removed = queries.purge_expired(session, now=datetime.now(UTC))
    out.print(f"Removed {removed} expired row(s).")


@audit_app.command("verify")
def audit_verify(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Check the audit hash chain; name the first event that was edited, deleted, reordered or inserted."""
    from broker.audit import AuditTrail
    from broker.keys import Keys
    from broker.store.db import Database

    settings = _load(config)
    database = Database(settings.database_url)
    with database.transaction() as session:
        result = AuditTrail(Keys(settings.secret_key)).verify_store(session)
    if result.ok:
        out.print(f"[green]Audit chain intact[/green]: {result.checked} event(s) verified.")
        return
    err.print(
        f"[red]Audit chain broken at event {result.bad_seq}[/red]: {result.problem} "
        f"({result.checked} event(s) verified before it)."
    )
    raise typer.Exit(1)


@audit_app.command("export")
def audit_export(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")] = None,
) -> None:
    """Write every audit event as JSON Lines, in chain order."""
    from broker.audit import export_jsonl
    from broker.store.db import Database

    settings = _load(config)
    database = Database(settings.database_url)
    with database.transaction() as session:
        if output is None:
            count = export_jsonl(session, sys.stdout)
        else:
            with output.open("w") as handle:
                count = export_jsonl(session, handle)
    err.print(f"Exported {count} event(s).")


@app.command("hash-password", rich_help_panel=SERVER)
def hash_password() -> None:
    """Hash a break-glass password with argon2id for `identity_stores[].accounts[].password_hash`."""
    from broker.connectors.local import hash_password as make_hash

    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 16:
        err.print("[red]Use at least 16 characters for a break-glass password.[/red]")
        raise typer.Exit(2)
    out.print(make_hash(password))


@app.command("serve", rich_help_panel=SERVER)
def serve(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (share the database).")] = 1,
) -> None:
    """Run the broker with the given configuration (migrate first with `broker db upgrade`)."""
    from importlib.util import find_spec

    import uvicorn

    settings = _load(config)
    from broker import logs

    logs.configure(settings.log_level, json=settings.log_json)
    os.environ["BROKER_CONFIG"] = str(config)
    server = settings.server
    # uvloop's event loop and httptools' parser (both dependencies) take less CPU per request than uvicorn's
    # pure-Python fallbacks, which serve only where they cannot be installed.
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http = "httptools" if find_spec("httptools") else "h11"
    logs.get_logger("broker.serve").debug("starting uvicorn", workers=workers, loop=loop, http=http)
    # X-Forwarded-For/-Proto only from the configured proxies; otherwise the TCP peer is the client (a client
    # could otherwise pick its own address and escape per-address limits and source_cidrs).
    trusted = [str(net) for net in server.forwarded_allow_ips]
    uvicorn.run(
        "broker.app:from_environment",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop=loop,
        http=http,
        log_config=None,
        access_log=False,
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
        server_header=False,
        timeout_graceful_shutdown=20,
        # HTTPS without a terminating proxy (server.tls_cert_file / tls_key_file).
        ssl_certfile=str(server.tls_cert_file) if server.tls_cert_file else None,
        ssl_keyfile=str(server.tls_key_file) if server.tls_key_file else None,
    )


@app.command("dev", rich_help_panel=SERVER)
def dev(
    port: Annotated[int, typer.Option(help="Port for the broker.")] = 8000,
    data_dir: Annotated[Path, typer.Option(help="Folder for the SQLite database and demo account.")] = Path("var/dev"),
    config: Annotated[Path, typer.Option(help="Dev configuration.")] = Path("config/dev.yaml"),
) -> None:
    """Run the whole broker offline: SQLite, a demo break-glass account, and a local STS emulator."""
    from broker import devmode

    devmode.run(port=port, data_dir=data_dir, config=config, console=out)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
