"""The ``broker`` command. Operator commands import the server stack lazily so ``--help`` stays fast."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

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
    # Requests, revocation, principals, sessions, issuances, audit search, access report.
    from broker.admin_cli import register

    register(app, audit_app, panel="Administer access (operator)")


_register_admin()


def _register_releases() -> None:
    # Schema revisions (db upgrade/downgrade/current/history) and signing-key rotation.
    from broker.db_cli import register as register_db
    from broker.signing_keys_cli import register as register_signing_keys

    register_db(db_app)
    register_signing_keys(app, panel=SERVER)


_register_releases()


def _register_policy() -> None:
    from broker.explain_cli import register

    register(app, panel="Administer access (operator)")


_register_policy()


def _register_keys() -> None:
    from broker.keys_cli import register

    register(app, panel=SERVER)


_register_keys()

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
        err.print(f"Configuration {path} is not valid:", style="red", markup=False, highlight=False)
        # Config text is printed literally: a pattern such as '^[a-z0-9]{0,62}$' is not terminal markup.
        for where, problem in exc.problems:
            err.print(f"  {where}: {problem}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def _existing_database(settings: Settings, config: Path) -> str:
    """The database URL for an operator command; exit 2 rather than create an empty database by accident."""
    from broker.settings import display_database_url
    from broker.store.db import existing_schema_problem

    problem = existing_schema_problem(settings.database_url)
    if problem is not None:
        err.print(
            f"No broker database for {config}: {problem} "
            f"(database_url: {display_database_url(settings.database_url)}).\n"
            f"Start `broker dev` first, or create the schema with `broker db upgrade -c {config}`; "
            "BROKER_DATABASE_URL overrides the file's database_url.",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    return settings.database_url


def _database_url_option(value: str) -> str:
    """A ``--database-url`` value: a URL, or an ``env:NAME`` / ``file:/path`` reference as in the YAML file."""
    from broker.settings import resolve_database_url

    try:
        url: str = resolve_database_url(value)
    except ValueError as exc:
        err.print(f"[red]--database-url[/red]: {exc}.", highlight=False)
        raise typer.Exit(2) from None
    return url


@config_app.command("check")
def config_check(path: Annotated[Path, typer.Argument(help="YAML file to check.")] = Path(DEFAULT_CONFIG)) -> None:
    """Validate a configuration file and report every problem at once, with its YAML path.

    When the database exists, also check that the configured keys can read what is stored under them.
    """
    settings = _load(path)
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
    from broker.store.db import Database, existing_schema_problem, is_ready

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
def db_purge(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Delete expired replay-guard entries, sign-ins in flight and sessions (the server also does this hourly)."""
    from datetime import UTC, datetime

    from broker.store import queries
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    with database.transaction() as session:
        removed = queries.purge_expired(session, now=datetime.now(UTC))
    out.print(f"Removed {removed} expired row(s).")


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    digests: Annotated[
        str | None,
        typer.Option(
            "--digests",
            help="Check against the signed digests in this directory or s3://BUCKET/PREFIX, with --public-key only "
            "(no secret key needed). Default: the configured audit.anchor sinks, after the keyed check.",
        ),
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option("--public-key", help="PEM file with the digests' Ed25519 public key (for --digests)."),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", envvar="BROKER_DATABASE_URL", help="With --digests: the database to check."),
    ] = None,
) -> None:
    """Check the audit trail; name the first event that was edited, deleted, reordered or inserted.

    Without --digests: the keyed check of every segment (needs the configuration's secret keys), then the signed
    digests in the configured audit.anchor sinks. With --digests and --public-key: only the signed digests,
    which also catch a rewrite by someone holding the database and the secret key. Exit 0 intact, 1 broken,
    2 unusable input.
    """
    from datetime import timedelta

    from broker.anchors import DigestSink, load_public_key, open_source, sinks_for, verify_digests
    from broker.audit import AuditTrail, VerifyResult
    from broker.errors import AnchorUnavailable
    from broker.keys import Keys
    from broker.store.db import Database

    def report(label: str, result: VerifyResult) -> None:
        if result.ok:
            return
        err.print(
            f"[red]{label} broken at {result.where}[/red]: {result.problem} "
            f"({result.checked} event(s) verified before it).",
            highlight=False,
        )
        raise typer.Exit(1)

    def check_digests(database: Database, source: str | DigestSink, pem: bytes) -> VerifyResult:
        try:
            key = load_public_key(pem)
        except ValueError as exc:
            err.print(f"[red]The public key cannot be used[/red]: {exc}.")
            raise typer.Exit(2) from None
        try:
            sink = open_source(source) if isinstance(source, str) else source
            with database.transaction() as session:
                return verify_digests(session, sink, key)
        except AnchorUnavailable as exc:
            err.print(f"[red]Cannot read the digests[/red]: {exc.message}", highlight=False)
            raise typer.Exit(2) from None

    if digests is not None:
        if public_key is None:
            err.print("[red]--digests needs --public-key PEM[/red] (the Ed25519 public key that signed them).")
            raise typer.Exit(2)
        try:
            pem = public_key.read_bytes()
        except OSError as exc:
            err.print(f"[red]Cannot read {public_key}[/red]: {exc.strerror}.")
            raise typer.Exit(2) from None
        database = Database(_database_url_option(database_url) if database_url else _load(config).database_url)
        result = check_digests(database, digests, pem)
        report("Audit trail", result)
        out.print(
            f"[green]Audit trail matches the signed digests[/green]: {result.checked} event(s) in "
            f"{result.segments} segment(s) verified against {digests}."
        )
        return

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    trail = AuditTrail(Keys(settings.root_keys), seal_window=timedelta(seconds=settings.audit.seal_window_seconds))
    with database.transaction() as session:
        result = trail.verify_store(session)
    report("Audit trail", result)
    out.print(
        f"[green]Audit chain intact[/green]: {result.checked} event(s) verified "
        f"({result.checked - result.unsealed} sealed in {result.segments} segment(s), {result.unsealed} awaiting "
        f"the sealer within its {settings.audit.seal_window_seconds:g} s window)."
    )
    anchor = settings.audit.anchor
    if anchor.signing_key is None:
        out.print(
            "[yellow]No signed digests configured[/yellow] (audit.anchor): deleting the newest sealed segments, or "
            "rewriting the trail with the secret key, is only detectable with them (docs/deployment.md)."
        )
    else:
        pem = anchor.signing_key.get_secret_value().encode()
        for sink in sinks_for(anchor):
            signed = check_digests(database, sink, pem)
            report(f"Audit trail (digests in {sink.location})", signed)
            out.print(f"[green]Matches the signed digests[/green] in {sink.location}: {signed.checked} event(s).")


@audit_app.command("seal")
def audit_seal(config: ConfigOption = Path(DEFAULT_CONFIG)) -> None:
    """Run one sealer pass now (and publish a digest if one is due), e.g. when no broker process is running."""
    from broker.audit import AuditTrail
    from broker.keys import Keys
    from broker.sealer import build_sealer
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    sealer = build_sealer(AuditTrail(Keys(settings.root_keys)), database, settings.audit)
    sealed = sealer.run_once()
    out.print(f"Sealed {sealed} event(s).")


@audit_app.command("export")
def audit_export(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")] = None,
) -> None:
    """Write every audit event as JSON Lines, in chain order."""
    from broker.audit import export_jsonl
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    with database.transaction() as session:
        if output is None:
            count = export_jsonl(session, sys.stdout)
        else:
            with output.open("w") as handle:
                count = export_jsonl(session, handle)
    err.print(f"Exported {count} event(s).")


@app.command("hash-password", rich_help_panel=SERVER)
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


scim_app = typer.Typer(help="SCIM provisioning clients (Okta, Entra ID).", no_args_is_help=True)
app.add_typer(scim_app, name="scim", rich_help_panel=SERVER)


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


@app.command("serve", rich_help_panel=SERVER)
def serve(
    config: ConfigOption = Path(DEFAULT_CONFIG),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Worker processes (share the database).")] = 1,
) -> None:
    """Run the broker with the given configuration (migrate first with `broker db upgrade`)."""
    import contextlib
    from importlib.util import find_spec

    import uvicorn

    from broker.monitoring import multiprocess_dir

    settings = _load(config)
    from broker import logs

    logs.configure(settings.log_level, json=settings.log_json)
    from broker.db_cli import check_schema_before_serving

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


@app.command("dev", rich_help_panel=SERVER)
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


@app.command("dev-token", rich_help_panel=SERVER)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
