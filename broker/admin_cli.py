"""Operator subcommands: access requests, revocation, principals, sessions, issuances, audit search, access
report, and one pass of the background worker.

These run as the operator's own tool, directly against the broker's database with the broker's
configuration (the same trust as ``broker db upgrade`` or ``broker audit export``: whoever runs them holds
the database URL and the root secret). They do not go through the admin API's group and MFA checks, so they
audit as the operator: every change is an audit event whose principal is ``operator:<login>@<host>`` (or
``--as NAME``), with store ``cli``. Self-approval is still refused when ``--as`` names the requester.
People without database access use the admin API (``/api/v1/admin``) instead.
"""

from __future__ import annotations

import getpass
import json
import socket
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker.terminal import print_table

if TYPE_CHECKING:
    from broker.operations import Operations
    from broker.revocation import Actor

out = Console()
err = Console(stderr=True)
ConfigOption = Annotated[Path, typer.Option("--config", "-c", envvar="BROKER_CONFIG", help="YAML configuration file.")]
AsOption = Annotated[
    str | None,
    typer.Option("--as", envvar="BROKER_OPERATOR", help="Operator name for the audit trail (default: login@host)."),
]
ReasonOption = Annotated[str, typer.Option("--reason", "-r", help="Why (ticket or incident id); audited.")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
DEFAULT_CONFIG = Path("config/broker.yaml")

requests_app = typer.Typer(help="Just-in-time access requests: list, approve, deny.", no_args_is_help=True)
revoke_app = typer.Typer(
    help="Revoke live credentials: one issuance, a person, a role, a device or a certificate.", no_args_is_help=True
)
principals_app = typer.Typer(help="Disable or enable a person (disabling revokes everything).", no_args_is_help=True)
sessions_app = typer.Typer(help="Broker sessions.", no_args_is_help=True)
issuances_app = typer.Typer(help="Credentials the broker issued.", no_args_is_help=True)


def register(app: typer.Typer, audit_app: typer.Typer, panel: str) -> None:
    app.add_typer(requests_app, name="requests", rich_help_panel=panel)
    app.add_typer(revoke_app, name="revoke", rich_help_panel=panel)
    app.add_typer(principals_app, name="principals", rich_help_panel=panel)
    app.add_typer(sessions_app, name="sessions", rich_help_panel=panel)
    app.add_typer(issuances_app, name="issuances", rich_help_panel=panel)
    app.command("access-report", rich_help_panel=panel)(access_report)
    app.command("sweep", rich_help_panel=panel)(sweep)
    audit_app.command("search")(audit_search)


def _operations(config: Path) -> Operations:
    from broker.aws.sts import Sts
    from broker.cli import _existing_database, _load
    from broker.federation import Broker
    from broker.operations import Operations, build_revoker
    from broker.store.db import Database

    settings = _load(config)
    database = Database(_existing_database(settings, config))
    if settings.dev:
        # Dev mode's IAM is the local emulator, which takes the placeholder key (broker.aws.emulator).
        from broker.aws.emulator import use_emulator_keys

        use_emulator_keys()
    broker = Broker(settings, db=database, sts=Sts(settings.aws, web_identity_token=_no_token))
    return Operations(broker, revoker=build_revoker(broker))


def _no_token(_: Any) -> str:
    raise RuntimeError("operator commands never call STS")


def _actor(as_name: str | None) -> Actor:
    from broker.revocation import Actor

    return Actor.operator(as_name or f"{getpass.getuser()}@{socket.gethostname()}")


def _ctx() -> Any:
    from broker.audit import Context

    return Context(user_agent="broker-cli", request_id=f"cli-{datetime.now().strftime('%Y%m%dT%H%M%S')}")


def _run(action: Any) -> Any:
    from broker.errors import BrokerError

    try:
        return action()
    except BrokerError as exc:
        # Printed literally: a message may quote config text or names with brackets.
        err.print(f"{exc.code} ({exc.reason}): {exc.message}", style="red", markup=False, highlight=False)
        raise typer.Exit(1) from None


def _print(rows: list[dict[str, Any]], columns: list[str], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table(*columns)
    for row in rows:
        table.add_row(*[str(row.get(c, "") if row.get(c) is not None else "") for c in columns])
    print_table(out, table)


# ---------------------------------------------------------------- requests


@requests_app.command("list")
def requests_list(
    config: ConfigOption = DEFAULT_CONFIG,
    status: Annotated[str | None, typer.Option(help="pending, approved, denied, expired, ended ...")] = None,
    role: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """List access requests, newest first."""
    ops = _operations(config)
    rows = ops.requests(status=status, role=role)
    _print(
        rows, ["id", "principal", "role", "status", "duration_seconds", "reason", "expires_at", "decided_by"], as_json
    )


@requests_app.command("approve")
def requests_approve(
    request_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    note: Annotated[str | None, typer.Option(help="Note for the audit trail.")] = None,
    as_name: AsOption = None,
) -> None:
    """Approve a pending request: the role is usable from now for the requested window."""
    ops = _operations(config)
    view = _run(lambda: ops.elevation.approve(_actor(as_name), request_id, note=note, ctx=_ctx()))
    out.print(f"[green]Approved[/green] request {view.id}: {view.principal} -> {view.role} until {view.grant_ends_at}")


@requests_app.command("deny")
def requests_deny(
    request_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    note: Annotated[str | None, typer.Option(help="Note for the audit trail.")] = None,
    as_name: AsOption = None,
) -> None:
    """Deny a pending request."""
    ops = _operations(config)
    view = _run(lambda: ops.elevation.deny(_actor(as_name), request_id, note=note, ctx=_ctx()))
    out.print(f"Denied request {view.id} ({view.principal} -> {view.role}).")


# ---------------------------------------------------------------- revocation


def _revoked(outcome: Any) -> None:
    data = outcome.to_json()
    out.print_json(json.dumps(data))
    if data["aws"]["failed"]:
        err.print("[red]Not applied in AWS for some roles[/red]; fix the cause and run the command again.")
        raise typer.Exit(1)


@revoke_app.command("issuance")
def revoke_issuance(
    issuance_id: int, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Revoke one issuance (and that person's older sessions of the same role: IAM cannot target one key)."""
    ops = _operations(config)
    _revoked(_run(lambda: ops.revocations.revoke_issuance(_actor(as_name), issuance_id, reason=reason, ctx=_ctx())))


@revoke_app.command("principal")
def revoke_principal(
    principal: str,
    reason: ReasonOption,
    config: ConfigOption = DEFAULT_CONFIG,
    role: Annotated[str | None, typer.Option(help="Only this role's credentials (sessions stay).")] = None,
    as_name: AsOption = None,
) -> None:
    """Revoke every live credential of a person (email or username) and sign them out everywhere."""
    ops = _operations(config)
    _revoked(
        _run(
            lambda: ops.revocations.revoke_principal(
                _actor(as_name), principal, reason=reason, ctx=_ctx(), role=role, sign_out=role is None
            )
        )
    )


@revoke_app.command("role")
def revoke_role(
    role: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Revoke every live session of a role, whoever holds it."""
    ops = _operations(config)
    _revoked(_run(lambda: ops.revocations.revoke_role(_actor(as_name), role, reason=reason, ctx=_ctx())))


def _device_revocations(ops: Operations) -> Any:
    from broker.devices import DeviceRevocations

    return DeviceRevocations(db=ops.db, audit=ops.audit, revocations=ops.revocations, clock=ops.clock)


def _devices_revoked(result: dict[str, Any]) -> None:
    out.print_json(json.dumps(result, default=str))
    if any(r["aws"]["failed"] for r in result["revocations"]):
        err.print("[red]Not applied in AWS for some roles[/red]; fix the cause and run the command again.")
        raise typer.Exit(1)


@revoke_app.command("certificate")
def revoke_certificate(
    serial: Annotated[str, typer.Option("--serial", help="The certificate's serial number, in hexadecimal.")],
    reason: ReasonOption,
    config: ConfigOption = DEFAULT_CONFIG,
    issuer: Annotated[
        str | None,
        typer.Option(help="The issuer DN (RFC 4514, as in the audit trail); needed if the serial never signed in."),
    ] = None,
    as_name: AsOption = None,
) -> None:
    """Refuse a device certificate from now on and end the live AWS sessions of the device it signed in as."""
    ops = _operations(config)
    revocations = _device_revocations(ops)
    _devices_revoked(
        _run(lambda: revocations.revoke_certificate(_actor(as_name), serial, issuer=issuer, reason=reason, ctx=_ctx()))
    )


@revoke_app.command("device")
def revoke_device(
    principal: Annotated[str, typer.Argument(help="The device identity (its username, or store:subject).")],
    reason: ReasonOption,
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
) -> None:
    """Refuse every certificate a device signed in with and end its live AWS sessions."""
    ops = _operations(config)
    revocations = _device_revocations(ops)
    _devices_revoked(_run(lambda: revocations.revoke_device(_actor(as_name), principal, reason=reason, ctx=_ctx())))


# ---------------------------------------------------------------- principals, sessions, issuances


@principals_app.command("disable")
def principals_disable(
    principal: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Disable a person: no new sign-ins, sessions ended, live credentials revoked in AWS."""
    ops = _operations(config)
    result = _run(
        lambda: ops.revocations.set_disabled(_actor(as_name), principal, disabled=True, reason=reason, ctx=_ctx())
    )
    out.print_json(json.dumps(result))


@principals_app.command("enable")
def principals_enable(
    principal: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Enable a disabled person again."""
    ops = _operations(config)
    result = _run(
        lambda: ops.revocations.set_disabled(_actor(as_name), principal, disabled=False, reason=reason, ctx=_ctx())
    )
    out.print_json(json.dumps(result))


@sessions_app.command("list")
def sessions_list(
    config: ConfigOption = DEFAULT_CONFIG,
    principal: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """Live broker sessions."""
    rows = _operations(config).sessions(principal=principal)
    _print(rows, ["principal", "store", "created_at", "last_seen_at", "expires_at", "client_ip"], as_json)


@issuances_app.command("list")
def issuances_list(
    config: ConfigOption = DEFAULT_CONFIG,
    principal: Annotated[str | None, typer.Option()] = None,
    role: Annotated[str | None, typer.Option()] = None,
    live: Annotated[bool, typer.Option(help="Only unexpired, unrevoked credentials.")] = False,
    limit: Annotated[int, typer.Option()] = 100,
    as_json: JsonOption = False,
) -> None:
    """Credentials issued, newest first (the AccessKeyId ties each to CloudTrail)."""
    rows = _operations(config).issuances(principal=principal, role=role, live=live, limit=limit)
    columns = ["id", "source_identity", "role", "channel", "access_key_id", "issued_at", "expires_at", "revoked_at"]
    _print(rows, columns, as_json)


# ---------------------------------------------------------------- audit, report, worker


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
    ops = _operations(config)
    if since is not None and since.tzinfo is None:
        from datetime import UTC

        since = since.replace(tzinfo=UTC)
    filters = {"event": event, "principal": principal, "outcome": outcome, "reason": reason}
    _run(lambda: ops.record_admin_read(_actor(as_name), "read_audit", _ctx(), {k: v for k, v in filters.items() if v}))
    rows = ops.audit_events(event=event, principal=principal, outcome=outcome, reason=reason, since=since, limit=limit)
    if as_json:
        out.print_json(json.dumps(rows, default=str))
        return
    for row in rows:
        row["detail"] = json.dumps(row["detail"], default=str)[:200]
    _print(rows, ["seq", "occurred_at", "event", "outcome", "reason", "principal", "client_ip", "detail"], False)


def access_report(
    config: ConfigOption = DEFAULT_CONFIG,
    days: Annotated[int, typer.Option(help="Usage window in days.")] = 90,
    format: Annotated[str, typer.Option("--format", "-f", help="table, csv or json")] = "table",
) -> None:
    """Per role: the rules that grant it and to whom, who used it and how often, grants never used."""
    from broker.review import report_csv

    if format not in {"table", "csv", "json"}:
        err.print("--format must be table, csv or json")
        raise typer.Exit(2)
    report = _operations(config).report(days=days)
    if format == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    if format == "csv":
        sys.stdout.write(report_csv(report))
        return
    table = Table("role", "access", "rules", "granted to", f"used (last {days} days)", "unused grants", title="Access")
    for role in report["roles"]:
        used = ", ".join(f"{who} ({u['issuances']})" for who, u in role["used_by"].items())
        table.add_row(
            role["role"],
            role["access"] + (f"\napprovers: {', '.join(role['approvers'])}" if role["approvers"] else ""),
            "\n".join(role["rules"]),
            ", ".join(role["granted_to"]) or "-",
            used or "-",
            ", ".join(role["unused_grants"]) or "-",
        )
    print_table(out, table)
    people = report.get("provisioned_never_signed_in") or []
    if people:
        waiting = Table("store", "userName", "active", "groups", "roles", title="Provisioned, never signed in")
        for person in people:
            waiting.add_row(
                person["store"],
                person["user_name"],
                "yes" if person["active"] else "no",
                ", ".join(person["groups"]) or "-",
                ", ".join(person["roles"]) or "-",
            )
        print_table(out, waiting)


def sweep(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """One pass of the background worker: expire requests, end grants (revoking), alerts, webhooks."""
    result = _run(lambda: _operations(config).run_once())
    out.print_json(json.dumps(result))
