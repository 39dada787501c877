"""``broker audit ...``: verify, seal, export and search the hash-chained audit trail.

verify, seal and export are the operator's own tools over the database (the same trust as ``broker db
upgrade``); search is audited as the operator (``operator:<login>@<host>`` or ``--as NAME``).
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from broker.cli.options import (
    DEFAULT_CONFIG,
    AsOption,
    ConfigOption,
    JsonOption,
    actor,
    ctx,
    database_url_option,
    err,
    load_config,
    operator_services,
    print_rows,
    run,
)

out = Console()
audit_app = typer.Typer(help="Verify and export the hash-chained audit trail.", no_args_is_help=True)


@audit_app.command("search")
def audit_search(
    config: ConfigOption = DEFAULT_CONFIG,
    event: Annotated[str | None, typer.Option(help="login, credentials, access_request, revocation, alert ...")] = None,
    principal: Annotated[str | None, typer.Option()] = None,
    outcome: Annotated[str | None, typer.Option(help="ok, denied, failed, raised ...")] = None,
    reason: Annotated[str | None, typer.Option()] = None,
    since: Annotated[datetime | None, typer.Option(help="ISO time, e.g. 2026-12-01T08:00:00+00:00")] = None,
    limit: Annotated[int, typer.Option()] = 50,
    as_json: JsonOption = False,
    as_name: AsOption = None,
) -> None:
    """Search audit events, newest first (the search itself is audited)."""
    ops = operator_services(config).operations
    if since is not None and since.tzinfo is None:
        from datetime import UTC

        since = since.replace(tzinfo=UTC)
    filters = {"event": event, "principal": principal, "outcome": outcome, "reason": reason}
    run(lambda: ops.record_admin_read(actor(as_name), "read_audit", ctx(), {k: v for k, v in filters.items() if v}))
    rows = ops.audit_events(event=event, principal=principal, outcome=outcome, reason=reason, since=since, limit=limit)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    for row in rows:
        row["detail"] = json.dumps(row["detail"], default=str)[:200]
    print_rows(rows, ["seq", "occurred_at", "event", "outcome", "reason", "principal", "client_ip", "detail"], False)


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = DEFAULT_CONFIG,
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

    from broker.anchors import DigestSink, load_public_key, open_source, sinks_for, verify_digests
    from broker.audit import VerifyResult
    from broker.errors import AnchorUnavailable
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
        database = Database(database_url_option(database_url) if database_url else load_config(config).database_url)
        result = check_digests(database, digests, pem)
        report("Audit trail", result)
        out.print(
            f"[green]Audit trail matches the signed digests[/green]: {result.checked} event(s) in "
            f"{result.segments} segment(s) verified against {digests}."
        )
        return

    services = operator_services(config)
    settings, database = services.settings, services.db
    # The audit trail under the configured seal window: events older than it must be sealed.
    with database.transaction() as session:
        result = services.audit.verify_store(session)
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
def audit_seal(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Run one sealer pass now (and publish a digest if one is due), e.g. when no broker process is running."""
    sealed = operator_services(config).sealer.run_once()
    out.print(f"Sealed {sealed} event(s).")


@audit_app.command("export")
def audit_export(
    config: ConfigOption = DEFAULT_CONFIG,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write; default stdout.")] = None,
) -> None:
    """Write every audit event as JSON Lines, in chain order."""
    from broker.audit import export_jsonl

    with operator_services(config).db.transaction() as session:
        if output is None:
            count = export_jsonl(session, sys.stdout)
        else:
            with output.open("w") as handle:
                count = export_jsonl(session, handle)
    err.print(f"Exported {count} event(s).")
