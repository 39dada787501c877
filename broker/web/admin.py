"""JSON API for just-in-time requests (``/api/v1/access-requests``), administration and audit
(``/api/v1/admin/...``), and Prometheus metrics (``/metrics``).

Callers authenticate with their broker session (the portal's cookie). Every state-changing call must be sent
as ``application/json``: a cross-site HTML form cannot produce that content type without a CORS preflight,
which the broker never answers, so a signed-in administrator's browser cannot be driven into a revocation.
Authorization lives in the use cases (``broker.operations``, ``broker.elevation``).
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from broker.context import Context
from broker.errors import BrokerError, InvalidRequest
from broker.operations import Operations
from broker.ratelimit import rate_limited
from broker.review import report_csv
from broker.revocation import Actor, require_reason
from broker.web.deps import ContextDep, CurrentDep

router = APIRouter(tags=["administration"], dependencies=[rate_limited("admin", per="ip")])


def get_operations(request: Request) -> Operations:
    operations: Operations = request.app.state.operations
    return operations


def require_json(request: Request, ctx: ContextDep) -> None:
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/json":
        ops = get_operations(request)
        error = InvalidRequest("Send this request as application/json.", reason="content_type_not_json")
        raise ops.audit.deny(ops.db, error, event="admin", ctx=ctx, detail={"path": request.url.path})


OpsDep = Annotated[Operations, Depends(get_operations)]
JsonOnly = Depends(require_json)
Limit = Annotated[int, Query(ge=1, le=1000)]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewRequest(Body):
    role: str = Field(max_length=64)
    reason: str = Field(max_length=1000)
    duration_seconds: int | None = Field(None, ge=0, le=7 * 24 * 3600)


class Decision(Body):
    note: str | None = Field(None, max_length=1000)


class RevokeBody(Body):
    scope: Literal["issuance", "principal", "role"]
    reason: str = Field(max_length=1000)
    issuance_id: int | None = None
    principal: str | None = Field(None, max_length=320)
    role: str | None = Field(None, max_length=64)


class ReasonBody(Body):
    reason: str = Field(max_length=1000)


class ExplainBody(Body):
    """An identity to simulate (``broker.policy.explain``): nothing is verified, issued or sent to AWS."""

    store: str = Field(max_length=64)
    subject: str = Field(max_length=512)
    username: str | None = Field(None, max_length=320)
    email: str | None = Field(None, max_length=320)
    groups: list[str] = Field([], max_length=500)
    attributes: dict[str, str] = {}
    mfa: Literal["none", "mfa", "phishing_resistant"] = "none"
    mfa_age_minutes: int | None = Field(None, ge=0, le=7 * 24 * 60)
    client_ip: str | None = Field(None, max_length=64)
    at: datetime | None = None
    role: str | None = Field(None, max_length=64)
    duration_seconds: int | None = Field(None, ge=0, le=7 * 24 * 3600)
    channel: Literal["console", "cli", "service"] = "cli"


# ---------------------------------------------------------------- just-in-time requests (any signed-in person)


@router.post("/api/v1/access-requests", status_code=201, dependencies=[JsonOnly], summary="Request a role")
def create_request(body: NewRequest, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    view = ops.elevation.request(
        current.identity, role=body.role, reason=body.reason, duration_seconds=body.duration_seconds, ctx=ctx
    )
    return view.to_json()


@router.get("/api/v1/access-requests", summary="Your access requests")
def my_requests(ops: OpsDep, current: CurrentDep, limit: Limit = 100) -> dict[str, Any]:
    return {"requests": ops.requests(principal=current.identity.principal, limit=limit)}


@router.post("/api/v1/access-requests/{request_id}/cancel", dependencies=[JsonOnly], summary="Withdraw or end")
def cancel_request(request_id: int, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    return ops.elevation.cancel(current.identity, request_id, ctx=ctx).to_json()


# ---------------------------------------------------------------- approvers


@router.post("/api/v1/admin/requests/{request_id}/approve", dependencies=[JsonOnly], summary="Approve a request")
def approve(request_id: int, body: Decision, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    return ops.elevation.approve(Actor.person(current.identity), request_id, note=body.note, ctx=ctx).to_json()


@router.post("/api/v1/admin/requests/{request_id}/deny", dependencies=[JsonOnly], summary="Deny a request")
def deny(request_id: int, body: Decision, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    return ops.elevation.deny(Actor.person(current.identity), request_id, note=body.note, ctx=ctx).to_json()


@router.get("/api/v1/admin/requests", summary="Access requests (approvers, admins, auditors)")
def list_requests(
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    status: str | None = None,
    role: str | None = None,
    principal: str | None = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    identity = current.identity
    approver_of = {r.name for r in ops.settings.roles if ops.elevation.may_approve(identity, r)}
    if not approver_of or (role is not None and role not in approver_of):
        ops.authorize(identity, change=False, ctx=ctx, action="list_requests")
        roles = None
    else:
        roles = approver_of if role is None else {role}
    rows = ops.requests(status=status, role=role, principal=principal, limit=limit)
    return {"requests": [r for r in rows if roles is None or r["role"] in roles]}


# ---------------------------------------------------------------- administrators and auditors


@router.get("/api/v1/admin/sessions", summary="Live broker sessions")
def sessions(
    ops: OpsDep, current: CurrentDep, ctx: ContextDep, principal: str | None = None, limit: Limit = 100
) -> dict[str, Any]:
    ops.authorize(current.identity, change=False, ctx=ctx, action="list_sessions")
    return {"sessions": ops.sessions(principal=principal, limit=limit)}


@router.get("/api/v1/admin/issuances", summary="Credentials issued")
def issuances(
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    principal: str | None = None,
    role: str | None = None,
    live: bool = False,
    limit: Limit = 100,
) -> dict[str, Any]:
    ops.authorize(current.identity, change=False, ctx=ctx, action="list_issuances")
    return {"issuances": ops.issuances(principal=principal, role=role, live=live, limit=limit)}


@router.get("/api/v1/admin/audit", summary="Audit events, newest first")
def audit_events(
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    event: str | None = None,
    principal: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Limit = 100,
) -> dict[str, Any]:
    access = ops.authorize(current.identity, change=False, ctx=ctx, action="read_audit")
    filters = {"event": event, "principal": principal, "outcome": outcome, "reason": reason}
    ops.record_admin_read(access.actor, "read_audit", ctx, {k: v for k, v in filters.items() if v})
    events = ops.audit_events(
        event=event, principal=principal, outcome=outcome, reason=reason, since=since, until=until, limit=limit
    )
    return {"events": events}


@router.get("/api/v1/admin/audit/export", summary="The whole audit trail as JSON Lines")
def audit_export(ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> Response:
    access = ops.authorize(current.identity, change=False, ctx=ctx, action="export_audit")
    ops.record_admin_read(access.actor, "export_audit", ctx)
    buffer = io.StringIO()
    ops.export_audit(buffer)
    return Response(buffer.getvalue(), media_type="application/jsonl", headers={"Cache-Control": "no-store"})


@router.get("/api/v1/admin/access-report", summary="Access review: grants, use, unused grants")
def report(
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    days: Annotated[int, Query(ge=1, le=3650)] = 90,
    format: Literal["json", "csv"] = "json",
) -> Response:
    access = ops.authorize(current.identity, change=False, ctx=ctx, action="access_report")
    ops.record_admin_read(access.actor, "access_report", ctx, {"days": days})
    data = ops.report(days=days)
    if format == "csv":
        return Response(report_csv(data), media_type="text/csv")
    return JSONResponse(data)


@router.post("/api/v1/admin/policy/explain", dependencies=[JsonOnly], summary="Simulate the grant rules")
def policy_explain(body: ExplainBody, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    """Which roles this identity would get, each grant rule matched or failed and why, and the STS request."""
    from datetime import UTC

    from broker.identity import Channel, MfaLevel
    from broker.policy import explain, simulated_identity

    access = ops.authorize(current.identity, change=False, ctx=ctx, action="policy_explain")
    ops.record_admin_read(access.actor, "policy_explain", ctx, {"store": body.store, "role": body.role})
    now = body.at or datetime.now(UTC)
    now = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    identity = simulated_identity(
        store=body.store,
        subject=body.subject,
        now=now,
        username=body.username,
        email=body.email,
        groups=body.groups,
        attributes=body.attributes,
        mfa=MfaLevel.parse(body.mfa),
        mfa_age_minutes=body.mfa_age_minutes,
    )
    roles = ops.settings.roles
    results = explain(
        identity,
        roles,
        now,
        role=body.role,
        channel=Channel(body.channel),
        client_ip=body.client_ip,
        duration_seconds=body.duration_seconds,
    )
    return {
        "identity": {"principal": identity.principal, "store": body.store, "subject": body.subject},
        "at": now.isoformat(),
        "roles": [e.to_json() for e in results],
    }


@router.post("/api/v1/admin/revocations", dependencies=[JsonOnly], summary="Revoke an issuance, person or role")
def revoke(body: RevokeBody, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    access = ops.authorize(current.identity, change=True, ctx=ctx, action=f"revoke_{body.scope}")
    target = {"issuance": body.issuance_id, "principal": body.principal, "role": body.role}[body.scope]
    reason = _checked_reason(ops, access.actor, body.reason, ctx, missing_target=target in (None, ""))
    if body.scope == "issuance":
        outcome = ops.revocations.revoke_issuance(access.actor, int(body.issuance_id or 0), reason=reason, ctx=ctx)
    elif body.scope == "principal":
        outcome = ops.revocations.revoke_principal(access.actor, str(body.principal), reason=reason, ctx=ctx)
    else:
        outcome = ops.revocations.revoke_role(access.actor, str(body.role), reason=reason, ctx=ctx)
    return outcome.to_json()


def _checked_reason(ops: Operations, actor: Actor, reason: str, ctx: Context, *, missing_target: bool = False) -> str:
    """The change's reason (and target) are present, or the refusal is audited."""
    try:
        if missing_target:
            raise InvalidRequest("Name what to revoke: issuance_id, principal or role.", reason="revoke_target_missing")
        return require_reason(reason)
    except BrokerError as exc:
        raise ops.audit.deny(ops.db, exc, event="admin", principal=actor.name, store=actor.store, ctx=ctx) from None


@router.post("/api/v1/admin/principals/{principal}/disable", dependencies=[JsonOnly], summary="Disable a person")
def disable(principal: str, body: ReasonBody, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    access = ops.authorize(current.identity, change=True, ctx=ctx, action="disable_principal")
    reason = _checked_reason(ops, access.actor, body.reason, ctx)
    return ops.revocations.set_disabled(access.actor, principal, disabled=True, reason=reason, ctx=ctx)


@router.post("/api/v1/admin/principals/{principal}/enable", dependencies=[JsonOnly], summary="Enable a person")
def enable(principal: str, body: ReasonBody, ops: OpsDep, current: CurrentDep, ctx: ContextDep) -> dict[str, Any]:
    access = ops.authorize(current.identity, change=True, ctx=ctx, action="enable_principal")
    reason = _checked_reason(ops, access.actor, body.reason, ctx)
    return ops.revocations.set_disabled(access.actor, principal, disabled=False, reason=reason, ctx=ctx)


# ---------------------------------------------------------------- metrics


@router.get("/metrics", include_in_schema=False)
def metrics(ops: OpsDep) -> Response:
    """Prometheus text format. Expose it to the scraper's network only (it names roles and reasons)."""
    return Response(ops.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
