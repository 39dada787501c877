"""The portal's just-in-time access pages: ask for a role, follow your requests, answer other people's.

Server-rendered forms only (the CSP forbids inline script), each POST carrying the session's CSRF token
(double-submit, :func:`broker.web.deps.check_csrf`). The rules live in :mod:`broker.elevation`: who may ask,
the duration cap, that approvers need ``admin.change_mfa`` (phishing-resistant by default) and never answer
their own request. A refusal is audited once, by the use case or, for a form that never reaches it (a bad
CSRF token, an unreadable duration), here, and renders as the error page.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from broker.context import Context
from broker.elevation import RequestView
from broker.errors import InvalidRequest
from broker.operations import Operations
from broker.revocation import Actor
from broker.signin.sessions import CurrentSession
from broker.web.admin import OpsDep, get_operations
from broker.web.deps import ContextDep, CurrentDep, TemplatesDep, check_csrf, csrf_token

router = APIRouter(tags=["portal"])

STATUS_LABELS = {
    "pending": "Waiting for approval",
    "approved": "Approved",
    "denied": "Denied",
    "expired": "Expired unanswered",
    "cancelled": "Withdrawn",
    "ended": "Ended",
    "revoked": "Revoked",
}
# What the requester may do with a request in each status (``Elevation.cancel`` accepts exactly these).
ACTIONS = {"pending": "Cancel", "approved": "End now"}


@dataclass(frozen=True)
class RoleAccess:
    """What the portal shows for one role that needs a request: an open window, a pending request, or a form."""

    window_ends: str | None
    pending: RequestView | None
    durations: tuple[int, ...]
    default_duration: int


@dataclass(frozen=True)
class RequestRow:
    """One request as the ``/requests`` page shows it."""

    view: RequestView
    status: str
    asked: str
    window: str
    action: str | None


def utc(value: datetime | str | None, *, date: bool = True) -> str:
    """``2024-05-01 14:30 UTC`` (or ``14:30 UTC``); stored times are UTC, naive on some databases."""
    if value is None:
        return ""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC" if date else "%H:%M UTC")


def durations_up_to(cap: int, choices: Sequence[int]) -> tuple[int, ...]:
    """The portal's duration choices that fit under the request cap, and the cap itself."""
    return tuple(sorted({c for c in choices if c <= cap} | {cap}))


def _approver(ops: Operations, current: CurrentSession) -> bool:
    return any(ops.elevation.may_approve(current.identity, role) for role in ops.settings.roles)


def portal_context(request: Request, current: CurrentSession, choices: Sequence[int]) -> dict[str, Any]:
    """For the portal page: per just-in-time role what to offer, and whether to link ``/requests``."""
    ops = get_operations(request)
    now = ops.clock()
    mine = ops.elevation.requests_of(current.principal_id)
    windows = {g.role: g.ends_at for g in ops.elevation.active_grants(current.identity)}
    jit: dict[str, RoleAccess] = {}
    for role in ops.settings.roles:
        if role.requires_request is None:
            continue
        ends = windows.get(role.name)
        durations = durations_up_to(role.requires_request.max_duration_seconds, choices)
        jit[role.name] = RoleAccess(
            window_ends=utc(ends, date=ends.date() != now.date()) if ends else None,
            pending=next((v for v in mine if v.role == role.name and v.status == "pending"), None),
            durations=durations,
            default_duration=max((d for d in durations if d <= 3600), default=durations[0]),
        )
    return {"jit": jit, "requests_link": bool(mine) or _approver(ops, current)}


def _duration(ops: Operations, current: CurrentSession, value: str, ctx: Context) -> int | None:
    text = value.strip()
    if not text:
        return None  # the use case grants the role's cap
    if text.isdigit():
        return int(text)
    error = InvalidRequest("Choose a duration from the list.", reason="request_duration_invalid")
    raise ops.audit.deny(ops.db, error, event="access_request", identity=current.identity, ctx=ctx)


def _done() -> Response:
    # 303: the browser follows with a GET, so reloading the page does not send the form again.
    return RedirectResponse("/requests", status_code=303)


@router.get("/requests", response_class=HTMLResponse, summary="Your access requests, and those you approve")
def requests_page(request: Request, ops: OpsDep, current: CurrentDep, templates: TemplatesDep) -> Response:
    identity = current.identity
    mine = [
        RequestRow(
            view=v,
            status=STATUS_LABELS.get(v.status, v.status),
            asked=utc(v.created_at),
            window=f"until {utc(v.grant_ends_at)}" if v.grant_ends_at else f"{v.duration_seconds // 60} minutes asked",
            action=ACTIONS.get(v.status),
        )
        for v in ops.elevation.requests_of(current.principal_id)
    ]
    approver = _approver(ops, current)
    awaiting = [
        RequestRow(
            view=v,
            status=STATUS_LABELS["pending"],
            asked=utc(v.created_at),
            window=f"{v.duration_seconds // 60} minutes, expires unanswered at {utc(v.expires_at)}",
            action=None,
        )
        for v in (ops.elevation.awaiting(identity) if approver else [])
    ]
    response = templates.TemplateResponse(
        request,
        "requests.html",
        {
            "title": "Access requests",
            "identity": identity,
            "csrf": csrf_token(request),
            "dev": ops.settings.dev,
            "requests_link": True,
            "mine": mine,
            "approver": approver,
            "awaiting": awaiting,
            "change_mfa": ops.settings.admin.change_mfa,
            "strong_enough": identity.mfa.level >= ops.settings.admin.change_mfa,
        },
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@router.post("/requests", summary="Request a role that needs approval")
def create_request(
    request: Request,
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    role: Annotated[str, Form(max_length=64)] = "",
    # Longer than the use case accepts, so that it (not form parsing) refuses and audits an over-long reason.
    reason: Annotated[str, Form(max_length=8192)] = "",
    duration: Annotated[str, Form(max_length=16)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="access_request")
    seconds = _duration(ops, current, duration, ctx)
    ops.elevation.request(current.identity, role=role, reason=reason, duration_seconds=seconds, ctx=ctx)
    return _done()


@router.post("/requests/{request_id}/cancel", summary="Withdraw your request, or end its window now")
def cancel_request(
    request: Request,
    request_id: int,
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="access_request")
    ops.elevation.cancel(current.identity, request_id, ctx=ctx)
    return _done()


@router.post("/requests/{request_id}/approve", summary="Approve someone else's request")
def approve_request(
    request: Request,
    request_id: int,
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    note: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="access_request")
    ops.elevation.approve(Actor.person(current.identity), request_id, note=note or None, ctx=ctx)
    return _done()


@router.post("/requests/{request_id}/deny", summary="Deny someone else's request")
def deny_request(
    request: Request,
    request_id: int,
    ops: OpsDep,
    current: CurrentDep,
    ctx: ContextDep,
    note: Annotated[str, Form(max_length=1000)] = "",
    csrf: Annotated[str, Form(max_length=128)] = "",
) -> Response:
    check_csrf(request, csrf, event="access_request")
    ops.elevation.deny(Actor.person(current.identity), request_id, note=note or None, ctx=ctx)
    return _done()
