"""``broker serve``, ``broker config check``, ``broker db ...``, ``broker hash-password`` and ``broker scim token``:
running the server and preparing what it needs. Heavy imports happen inside the commands."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, err, load_config, operator_services

if TYPE_CHECKING:
    from broker.settings import Settings

out = Console()
config_app = typer.Typer(help="Check the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Manage the broker's database schema.", no_args_is_help=True)
scim_app = typer.Typer(help="SCIM provisioning clients (Okta, Entra ID).", no_args_is_help=True)


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML file to check.")] = DEFAULT_CONFIG) -> None:
    """Validate a configuration file and report every problem at once, with its YAML path.

    When the database exists, also check that the configured keys can read what is stored under them.
    """
    settings = load_config(path)
    problems = _stored_key_problems(settings)
    if problems:
        err.print(f"Configuration {path} cannot read what the database holds:", style="red", markup=False)
        for problem in problems:
            err.print(f"  {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    out.print(
        f"[green]OK[/green] {path}: mode {settings.mode}, {len(settings.identity_stores)} identity "
        f"store(s), {len(settings.roles)} role(s)."
    )


def _stored_key_problems(settings: Settings) -> list[str]:
    """Stored values the configured keys cannot read; nothing when there is no database yet."""
    from broker.errors import BrokerError
    from broker.keyring import Keyring
    from broker.keys import Keys
    from broker.store.db import Database, existing_schema_problem
    from broker.store.migrations import is_ready

    if existing_schema_problem(settings.database_url) is not None:
        return []
    database = Database(settings.database_url)
    if not is_ready(database)[0]:
        # Unreachable or not migrated yet: `broker db upgrade` and /readyz say so; nothing stored to check here.
        return []
    try:
        return Keyring(settings, db=database, keys=Keys(settings.root_keys)).report().problems
    except BrokerError as exc:
        return [f"stored keys could not be checked: {exc.message}"]


@db_app.command("purge")
def db_purge(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Delete expired replay-guard entries, sign-ins in flight and sessions (the server also does this hourly)."""
    from datetime import UTC, datetime

    from broker.store import queries

    with operator_services(config).db.transaction() as session:
        removed = queries.purge_expired(session, now=datetime.now(UTC))
    out.print(f"Removed {removed} expired row(s).")


def hash_password(
    stdin: Annotated[
        bool, typer.Option("--stdin", help="Read the password from standard input (one line), for scripts.")
    ] = False,
) -> None:
    """Hash a break-glass password with argon2id for `identity_stores[].accounts[].password_hash`.

    Prompts go to stderr and only the hash to stdout, so `broker hash-password > hash.txt` works.
    """
    from broker.connectors.local import hash_password as make_hash

    if stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 16:
        err.print("Use at least 16 characters for a break-glass password.", style="red", markup=False)
        raise typer.Exit(2)
    sys.stdout.write(make_hash(password) + "\n")


@scim_app.command("token")
def scim_token(
    client: Annotated[str, typer.Option("--client", help="The client's name in scim.clients (e.g. okta).")],
) -> None:
    """Make a bearer token for a provisioning client: paste the token into the IdP, the hash into the config."""
    import re
    import secrets

    from broker.scim.service import token_hash

    if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,62}", client):
        err.print("--client: use lower-case letters, digits, - and _ (the name in scim.clients).")
        raise typer.Exit(2)

    token = secrets.token_urlsafe(36)
    out.print(f"Token for the IdP (shown once, store it nowhere else):\n{token}\n", soft_wrap=True, highlight=False)
    out.print("Configuration (broker.yaml):", highlight=False)
    lines = ["scim:", "  clients:", f"    - name: {client}", f"      token_hash: {token_hash(token)}"]
    lines.append("      store: <the identity store it provisions>")
    out.print("\n".join(lines), soft_wrap=True, highlight=False)


GRACEFUL_SHUTDOWN_SECONDS = 20


def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (share the database).")] = 1,
) -> None:
    """Run the broker with the given configuration (migrate first with `broker db upgrade`)."""
    import contextlib
    from importlib.util import find_spec

    import uvicorn

    from broker.cli.db import check_schema_before_serving
    from broker.monitoring import multiprocess_dir

    settings = load_config(config)
    from broker import logs

    logs.configure(settings.log_level, json=settings.log_json)
    check_schema_before_serving(settings)
    os.environ["BROKER_CONFIG"] = str(config)
    server = settings.server
    # uvloop's event loop and httptools' parser (both dependencies) take less CPU per request than uvicorn's
    # pure-Python fallbacks, which serve only where they cannot be installed.
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    http: Any = "httptools" if find_spec("httptools") else "h11"
    # Devices with certificates need the TLS-aware h11 protocol (it hands the client certificate to the app).
    device_tls = _device_tls(settings)
    http = device_tls.pop("http", http)
    logs.get_logger("broker.serve").debug("starting uvicorn", workers=workers, loop=loop, http=str(http))
    # X-Forwarded-For/-Proto only from the configured proxies; otherwise the TCP peer is the client (a client
    # could otherwise pick its own address and escape per-address limits and source_cidrs).
    trusted = [str(net) for net in server.forwarded_allow_ips]
    # Workers share one fresh metrics directory, so /metrics sums counters over every worker. (One worker
    # serves in this process, whose metrics library was set up on import: it keeps its values in memory.)
    with multiprocess_dir() if workers > 1 else contextlib.nullcontext():
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
            # Draining: requests in flight get this long after SIGTERM (docs/operations.md "Shutdown and draining").
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            # HTTPS without a terminating proxy (server.tls_cert_file / tls_key_file).
            ssl_certfile=str(server.tls_cert_file) if server.tls_cert_file else None,
            ssl_keyfile=str(server.tls_key_file) if server.tls_key_file else None,
            **device_tls,
        )


def _device_tls(settings: Settings) -> dict[str, Any]:
    """Devices with certificates: ask for client certificates (mutual TLS at the broker) and pass them, with
    the raw TCP peer for forwarded-certificate checks, to the application (``broker.web.tls``)."""
    if not any(s.type == "x509" for s in settings.identity_stores):
        return {}
    import ssl

    from broker.web.tls import TlsH11Protocol

    options: dict[str, Any] = {"http": TlsH11Protocol}
    if settings.devices.tls_client_ca_file is not None:
        options.update(ssl_ca_certs=str(settings.devices.tls_client_ca_file), ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return options
