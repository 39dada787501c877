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

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from broker.cli.options import (
    DEFAULT_CONFIG,
    AsOption,
    ConfigOption,
    JsonOption,
    ReasonOption,
    actor,
    ctx,
    err,
    operator_services,
    print_rows,
    run,
)
from broker.terminal import print_table

out = Console()

requests_app = typer.Typer(help="Just-in-time access requests: list, approve, deny.", no_args_is_help=True)
revoke_app = typer.Typer(
    help="Revoke live credentials: one issuance, a person, a role, a device or a certificate.", no_args_is_help=True
)
principals_app = typer.Typer(help="Disable or enable a person (disabling revokes everything).", no_args_is_help=True)
sessions_app = typer.Typer(help="Broker sessions.", no_args_is_help=True)
issuances_app = typer.Typer(help="Credentials the broker issued.", no_args_is_help=True)


def register(app: typer.Typer, panel: str) -> None:
    app.add_typer(requests_app, name="requests", rich_help_panel=panel)
    app.add_typer(revoke_app, name="revoke", rich_help_panel=panel)
    app.add_typer(principals_app, name="principals", rich_help_panel=panel)
    app.add_typer(sessions_app, name="sessions", rich_help_panel=panel)
    app.add_typer(issuances_app, name="issuances", rich_help_panel=panel)
    app.command("access-report", rich_help_panel=panel)(access_report)
    app.command("sweep", rich_help_panel=panel)(sweep)


# ---------------------------------------------------------------- requests


@requests_app.command("list")
def requests_list(
    config: ConfigOption = DEFAULT_CONFIG,
    status: Annotated[str | None, typer.Option(help="pending, approved, denied, expired, ended ...")] = None,
    role: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """List access requests, newest first."""
    ops = operator_services(config).operations
    rows = ops.requests(status=status, role=role)
    print_rows(
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
    ops = operator_services(config).operations
    view = run(lambda: ops.elevation.approve(actor(as_name), request_id, note=note, ctx=ctx()))
    out.print(f"[green]Approved[/green] request {view.id}: {view.principal} -> {view.role} until {view.grant_ends_at}")


@requests_app.command("deny")
def requests_deny(
    request_id: int,
    config: ConfigOption = DEFAULT_CONFIG,
    note: Annotated[str | None, typer.Option(help="Note for the audit trail.")] = None,
    as_name: AsOption = None,
) -> None:
    """Deny a pending request."""
    ops = operator_services(config).operations
    view = run(lambda: ops.elevation.deny(actor(as_name), request_id, note=note, ctx=ctx()))
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
    ops = operator_services(config).operations
    _revoked(run(lambda: ops.revocations.revoke_issuance(actor(as_name), issuance_id, reason=reason, ctx=ctx())))


@revoke_app.command("principal")
def revoke_principal(
    principal: str,
    reason: ReasonOption,
    config: ConfigOption = DEFAULT_CONFIG,
    role: Annotated[str | None, typer.Option(help="Only this role's credentials (sessions stay).")] = None,
    as_name: AsOption = None,
) -> None:
    """Revoke every live credential of a person (email or username) and sign them out everywhere."""
    ops = operator_services(config).operations
    _revoked(
        run(
            lambda: ops.revocations.revoke_principal(
                actor(as_name), principal, reason=reason, ctx=ctx(), role=role, sign_out=role is None
            )
        )
    )


@revoke_app.command("role")
def revoke_role(
    role: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Revoke every live session of a role, whoever holds it."""
    ops = operator_services(config).operations
    _revoked(run(lambda: ops.revocations.revoke_role(actor(as_name), role, reason=reason, ctx=ctx())))


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
    revocations = operator_services(config).device_revocations
    _devices_revoked(
        run(lambda: revocations.revoke_certificate(actor(as_name), serial, issuer=issuer, reason=reason, ctx=ctx()))
    )


@revoke_app.command("device")
def revoke_device(
    principal: Annotated[str, typer.Argument(help="The device identity (its username, or store:subject).")],
    reason: ReasonOption,
    config: ConfigOption = DEFAULT_CONFIG,
    as_name: AsOption = None,
) -> None:
    """Refuse every certificate a device signed in with and end its live AWS sessions."""
    revocations = operator_services(config).device_revocations
    _devices_revoked(run(lambda: revocations.revoke_device(actor(as_name), principal, reason=reason, ctx=ctx())))


# ---------------------------------------------------------------- principals, sessions, issuances


@principals_app.command("disable")
def principals_disable(
    principal: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Disable a person: no new sign-ins, sessions ended, live credentials revoked in AWS."""
    _set_disabled(principal, reason, config, as_name, disabled=True)


@principals_app.command("enable")
def principals_enable(
    principal: str, reason: ReasonOption, config: ConfigOption = DEFAULT_CONFIG, as_name: AsOption = None
) -> None:
    """Enable a disabled person again."""
    _set_disabled(principal, reason, config, as_name, disabled=False)


def _set_disabled(principal: str, reason: str, config: Path, as_name: str | None, *, disabled: bool) -> None:
    ops = operator_services(config).operations
    result = run(
        lambda: ops.revocations.set_disabled(actor(as_name), principal, disabled=disabled, reason=reason, ctx=ctx())
    )
    out.print_json(json.dumps(result))


@sessions_app.command("list")
def sessions_list(
    config: ConfigOption = DEFAULT_CONFIG,
    principal: Annotated[str | None, typer.Option()] = None,
    as_json: JsonOption = False,
) -> None:
    """Live broker sessions."""
    rows = operator_services(config).operations.sessions(principal=principal)
    print_rows(rows, ["principal", "store", "created_at", "last_seen_at", "expires_at", "client_ip"], as_json)


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
    rows = operator_services(config).operations.issuances(principal=principal, role=role, live=live, limit=limit)
    columns = ["id", "source_identity", "role", "channel", "access_key_id", "issued_at", "expires_at", "revoked_at"]
    print_rows(rows, columns, as_json)


# ---------------------------------------------------------------- audit, report, worker


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
    report = operator_services(config).operations.report(days=days)
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
    result = run(lambda: operator_services(config).operations.run_once())
    out.print_json(json.dumps(result))
