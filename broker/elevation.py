"""Just-in-time access: request a role, someone else approves, the role works for that window only.

A role with ``requires_request`` grants nothing standing: its grant rules say who is *eligible* to ask. An
eligible person asks with a reason and a duration (capped at ``requires_request.max_duration_seconds``); a
member of one of the role's ``approvers`` groups, signed in at the admin change level, approves or denies;
nobody approves their own request. A request nobody answers within ``request_ttl_minutes`` expires. On
approval the window opens at once and ends by itself: :meth:`Elevation.sweep` (run by the background worker)
closes it and revokes the person's live credentials of that role (``broker.revocation``). Policy learns of
open windows as data (``policy.decide(..., active_grants=...)``). Every step is an audit event
(``access_request``) and a webhook notification.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import AccessDenied, BrokerError, InvalidRequest, MfaRequired, NotFound
from broker.identity import Identity
from broker.policy import ActiveGrant, grants
from broker.revocation import Actor, Revocations
from broker.settings import STS_MIN_DURATION, RoleConfig, Settings
from broker.store import access_requests, queries
from broker.store.db import Database

if TYPE_CHECKING:
    from broker.notify import Notifier
    from broker.store.db import Session
    from broker.store.models import AccessRequestRow

MAX_REASON_CHARS = 1000


@dataclass(frozen=True)
class RequestView:
    id: int
    principal: str
    role: str
    reason: str
    duration_seconds: int
    status: str
    created_at: str
    expires_at: str
    decided_by: str | None
    grant_ends_at: str | None

    @classmethod
    def of(cls, row: AccessRequestRow) -> RequestView:
        return cls(
            id=row.id,
            principal=row.principal,
            role=row.role_name,
            reason=row.reason,
            duration_seconds=row.duration_seconds,
            status=row.status,
            created_at=row.created_at.isoformat(),
            expires_at=row.expires_at.isoformat(),
            decided_by=row.decided_by,
            grant_ends_at=row.grant_ends_at.isoformat() if row.grant_ends_at else None,
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _names_of(session: Session, principal_id: int) -> set[str]:
    """Every name the requester goes by (username and email), folded for comparison."""
    found = queries.get_principal(session, principal_id=principal_id)
    return {n.casefold() for n in (found.username, found.email) if n} if found else set()


class Elevation:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        notifier: Notifier,
        revocations: Revocations,
        clock: Clock,
        provisioned: Callable[[Identity], Identity] | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.notifier = notifier
        self.revocations = revocations
        self.clock = clock
        # The identity as SCIM provisioning has it now (``broker.issuance.Provisioned``): eligibility uses its groups.
        self.provisioned = provisioned or (lambda identity: identity)

    # ------------------------------------------------------------ read by issuance

    def active_grants(self, identity: Identity, role: str | None = None) -> tuple[ActiveGrant, ...]:
        """The identity's open windows, as data for ``policy.decide``. Given a ``role`` that is not requested
        (no ``requires_request``), nothing is read: no window can matter to it."""
        if role is not None:
            config = self.settings.role(role)
            if config is None or config.requires_request is None:
                return ()
        now = self.clock()
        with self.db.transaction() as session:
            rows = queries.open_grants_for(session, store=identity.store, subject=identity.subject, now=now)
            return tuple(ActiveGrant(r.role_name, r.id, r.grant_ends_at) for r in rows if r.grant_ends_at)

    # ------------------------------------------------------------ the requester

    def request(
        self, identity: Identity, *, role: str, reason: str, duration_seconds: int | None, ctx: Context
    ) -> RequestView:
        config = self.settings.role(role)
        audit_args: dict[str, Any] = {"event": "access_request", "identity": identity, "ctx": ctx}
        detail = {"role": role, "duration_seconds": duration_seconds}
        try:
            if config is None or config.requires_request is None:
                raise InvalidRequest(f"Role {role!r} is not requested this way.", reason="request_not_applicable")
            if not grants(config, self.provisioned(identity)):
                raise AccessDenied("You are not eligible to request this role.", reason="request_not_eligible")
            text = reason.strip()
            if not text or len(text) > MAX_REASON_CHARS or not text.isprintable():
                raise InvalidRequest(
                    f"Say why you need the role (1 to {MAX_REASON_CHARS} printable characters).",
                    reason="request_reason_invalid",
                )
            if duration_seconds is not None and duration_seconds < STS_MIN_DURATION:
                raise InvalidRequest(f"Ask for at least {STS_MIN_DURATION} seconds.", reason="request_duration_invalid")
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, **audit_args, detail=detail) from None
        cap = config.requires_request.max_duration_seconds
        duration = min(duration_seconds or cap, cap)
        now = self.clock()
        with self.db.transaction() as session:
            principal = queries.upsert_principal(session, identity=identity, now=now)
            pending = queries.list_access_requests(
                session, status="pending", principal_id=principal.id, role_name=role, limit=1
            )
            if pending:
                duplicate = pending[0].id
            else:
                duplicate = None
                row = queries.create_access_request(
                    session,
                    principal_id=principal.id,
                    principal=identity.principal,
                    role_name=role,
                    reason=text,
                    duration_seconds=duration,
                    status="pending",
                    created_at=now,
                    expires_at=now + timedelta(minutes=config.requires_request.request_ttl_minutes),
                )
                event_detail = {
                    "request_id": row.id,
                    "role": role,
                    "duration_seconds": duration,
                    "requested_duration_seconds": duration_seconds,
                    "why": text,
                    "approvers": list(config.requires_request.approvers),
                }
                self.audit.append(session, outcome="ok", reason="requested", **audit_args, detail=event_detail)
                self.notifier.enqueue(
                    session,
                    "access_request.created",
                    f":raising_hand: {identity.principal} requests *{role}* for {duration // 60} min: {text[:200]} "
                    f"(request {row.id}; approvers: {', '.join(config.requires_request.approvers)})",
                    event_detail,
                )
                view = RequestView.of(row)
        if duplicate is not None:
            raise self.audit.deny(
                self.db,
                InvalidRequest(
                    f"You already have a pending request ({duplicate}) for this role.", reason="request_pending"
                ),
                **audit_args,
                detail={**detail, "request_id": duplicate},
            )
        return view

    def cancel(self, identity: Identity, request_id: int, *, ctx: Context) -> RequestView:
        """The requester withdraws a pending request, or ends an approved window early."""
        return self._transition(
            Actor.person(identity), request_id, ctx=ctx, action="cancel", note=None, requester_only=True
        )

    # ------------------------------------------------------------ approvers

    def approve(self, actor: Actor, request_id: int, *, note: str | None, ctx: Context) -> RequestView:
        return self._transition(actor, request_id, ctx=ctx, action="approve", note=note)

    def deny(self, actor: Actor, request_id: int, *, note: str | None, ctx: Context) -> RequestView:
        return self._transition(actor, request_id, ctx=ctx, action="deny", note=note)

    def may_approve(self, identity: Identity, role: RoleConfig) -> bool:
        rr = role.requires_request
        return rr is not None and bool(identity.groups.intersection(rr.approvers))

    # ------------------------------------------------------------ read by the portal

    def requests_of(self, principal_id: int, *, limit: int = 50) -> list[RequestView]:
        """The person's own requests, newest first, with the status they have now.

        The worker marks unanswered requests ``expired`` and closed windows ``ended`` on its next pass; until
        then a person should already read them that way (neither can be approved or used any more).
        """
        now = self.clock()
        with self.db.transaction() as session:
            rows = queries.list_access_requests(session, principal_id=principal_id, limit=limit)
            return [self._as_of(row, now) for row in rows]

    def awaiting(self, identity: Identity, *, limit: int = 100) -> list[RequestView]:
        """Pending requests this identity may answer: roles it approves, not yet expired, not its own."""
        now = self.clock()
        views: list[RequestView] = []
        with self.db.transaction() as session:
            for role in self.settings.roles:
                if not self.may_approve(identity, role):
                    continue
                rows = queries.list_access_requests(session, status="pending", role_name=role.name, limit=limit)
                views += [RequestView.of(r) for r in rows if r.expires_at > now and r.principal != identity.principal]
        return sorted(views, key=lambda v: v.id)[:limit]

    @staticmethod
    def _as_of(row: AccessRequestRow, now: datetime) -> RequestView:
        view = RequestView.of(row)
        if row.status == "pending" and row.expires_at <= now:
            return replace(view, status="expired")
        if row.status == "approved" and row.grant_ends_at is not None and row.grant_ends_at <= now:
            return replace(view, status="ended")
        return view

    def _transition(
        self,
        actor: Actor,
        request_id: int,
        *,
        ctx: Context,
        action: str,
        note: str | None,
        requester_only: bool = False,
    ) -> RequestView:
        now = self.clock()
        audit_args: dict[str, Any] = {
            "event": "access_request",
            "principal": actor.name,
            "store": actor.store,
            "ctx": ctx,
        }
        ended_principal: str | None = None
        try:
            with self.db.transaction() as session:
                row = queries.get_access_request(session, request_id=request_id, lock=True)
                if row is None:
                    raise NotFound("No such access request.", reason="request_unknown")
                config = self.settings.role(row.role_name)
                if requester_only:
                    self._check_requester(actor, row)
                else:
                    self._check_approver(actor, row, config, names=_names_of(session, row.principal_id))
                if action == "cancel" and row.status == "approved":
                    access_requests.end_grant(session, row=row, now=now, cut_short=True)
                    ended_principal = row.principal
                    outcome_reason = "cancelled_by_requester"
                elif row.status != "pending":
                    raise InvalidRequest(f"This request is already {row.status}.", reason="request_not_pending")
                elif row.expires_at <= now:
                    raise InvalidRequest("This request has expired.", reason="request_expired")
                elif action == "approve":
                    access_requests.approve_request(session, row=row, now=now)
                    outcome_reason = "approved"
                elif action == "deny":
                    access_requests.close_request(session, row=row, status="denied")
                    outcome_reason = "denied"
                else:
                    access_requests.close_request(session, row=row, status="cancelled")
                    outcome_reason = "cancelled"
                if action != "cancel":
                    note = (note or "").strip()[:MAX_REASON_CHARS] or None
                    access_requests.record_decision(session, row=row, by=actor.name, now=now, note=note)
                detail = {
                    "request_id": row.id,
                    "requester": row.principal,
                    "role": row.role_name,
                    "status": row.status,
                    "grant_ends_at": row.grant_ends_at.isoformat() if row.grant_ends_at else None,
                    "note": row.decision_note,
                }
                self.audit.append(session, outcome="ok", reason=outcome_reason, **audit_args, detail=detail)
                self.notifier.enqueue(
                    session,
                    f"access_request.{row.status}",
                    f":white_check_mark: {actor.name} {outcome_reason.replace('_', ' ')} request {row.id}: "
                    f"{row.principal} -> *{row.role_name}*"
                    + (f" until {row.grant_ends_at:%Y-%m-%d %H:%M} UTC" if row.status == "approved" else ""),
                    detail,
                )
                view = RequestView.of(row)
        except BrokerError as exc:
            detail = {"request_id": request_id, "action": action}
            raise self.audit.deny(self.db, exc, **audit_args, detail=detail) from None
        if ended_principal is not None:
            self.revocations.revoke_principal(
                Actor.system(),
                ended_principal,
                role=view.role,
                sign_out=False,
                reason=f"access request {view.id} ended early by the requester",
                ctx=ctx,
            )
        return view

    def _check_requester(self, actor: Actor, row: AccessRequestRow) -> None:
        if actor.name != row.principal:
            raise AccessDenied("Only the requester can withdraw a request.", reason="request_not_yours")

    def _check_approver(
        self, actor: Actor, row: AccessRequestRow, config: RoleConfig | None, *, names: set[str]
    ) -> None:
        """The one rule for answering a request, from the portal, the admin API and the CLI alike.

        Separation of duties: nobody answers their own request, whichever store they signed in with or name
        they act under (an operator's ``--as NAME`` is that person). Then only someone the configuration
        names answers: a member of the role's ``approvers`` groups signed in at ``admin.change_mfa``, or an
        operator listed in ``admin.request_operators``.
        """
        person = actor.name.removeprefix("operator:") if actor.identity is None else actor.name
        if person.casefold() in {row.principal.casefold(), *names}:
            raise AccessDenied("You cannot approve or deny your own request.", reason="self_approval")
        if actor.identity is None:
            if actor.store != "cli" or person not in self.settings.admin.request_operators:
                raise AccessDenied(
                    f"{person!r} is not an operator who may answer requests: add the name to "
                    "admin.request_operators, or answer in the portal or the admin API.",
                    reason="not_an_approver",
                )
            return
        if config is None or not self.may_approve(actor.identity, config):
            raise AccessDenied("You are not an approver for this role.", reason="not_an_approver")
        if actor.identity.mfa.level < self.settings.admin.change_mfa:
            raise MfaRequired(
                f"Approving needs a {self.settings.admin.change_mfa.label.replace('_', '-')} sign-in.",
                reason="approver_mfa_insufficient",
            )

    # ------------------------------------------------------------ the clock

    def sweep(self, ctx: Context | None = None) -> dict[str, int]:
        """Expire unanswered requests and close ended windows (revoking what they granted)."""
        ctx = ctx or Context()
        now = self.clock()
        ended: list[tuple[int, str, str]] = []
        expired = 0
        with self.db.transaction() as session:
            for row in queries.due_requests(session, now=now):
                access_requests.close_request(session, row=row, status="expired")
                expired += 1
                detail = {"request_id": row.id, "requester": row.principal, "role": row.role_name}
                self.audit.append(
                    session,
                    event="access_request",
                    outcome="expired",
                    reason="request_expired",
                    principal=row.principal,
                    ctx=ctx,
                    detail=detail,
                )
                self.notifier.enqueue(
                    session,
                    "access_request.expired",
                    f":hourglass: request {row.id} ({row.principal} -> *{row.role_name}*) expired unanswered",
                    detail,
                )
            for row in queries.due_grants(session, now=now):
                access_requests.end_grant(session, row=row, now=now)
                ended.append((row.id, row.principal, row.role_name))
                self.audit.append(
                    session,
                    event="access_request",
                    outcome="ended",
                    reason="grant_ended",
                    principal=row.principal,
                    ctx=ctx,
                    detail={"request_id": row.id, "role": row.role_name},
                )
                self.notifier.enqueue(
                    session,
                    "access_request.ended",
                    f":lock: {row.principal}'s access to *{row.role_name}* (request {row.id}) ended",
                    {"request_id": row.id, "requester": row.principal, "role": row.role_name},
                )
        for request_id, principal, role in ended:
            try:
                self.revocations.revoke_principal(
                    Actor.system(),
                    principal,
                    role=role,
                    sign_out=False,
                    reason=f"access request {request_id} ended",
                    ctx=ctx,
                )
            except BrokerError:
                continue  # audited by revoke_principal; the next sweep does not retry (the window is closed)
        return {"expired": expired, "ended": len(ended)}
