"""Administration: who may administer, what they can see and change, and the background worker.

:class:`Operations` is built once per process by the composition root (``broker.services``), for the web
service or for the ``broker`` admin subcommands (an operator's own tool). It owns the webhook
notifier, just-in-time requests, revocation, monitoring and the access report, and one background thread
(:meth:`start`) that sweeps expired requests and ended grants, evaluates alert rules and sends webhooks.

Admin and auditor access comes from IdP groups (``admin.admin_groups``, ``admin.auditor_groups``). Reading
needs ``admin.read_mfa``; changing (revoke, disable, approve) needs ``admin.change_mfa``, by default
``phishing_resistant``. Every refusal is an audit event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

from broker.audit import AuditTrail, export_jsonl
from broker.aws.revoke import RoleRevoker
from broker.context import Clock, Context
from broker.elevation import Elevation, RequestView
from broker.errors import AccessDenied, BrokerError, MfaRequired
from broker.identity import Identity
from broker.logs import get_logger
from broker.monitoring import Metrics, Monitor
from broker.notify import Notifier
from broker.review import access_report
from broker.revocation import Actor, Revocations
from broker.settings import AwsSettings, Settings
from broker.store import queries
from broker.store.db import Database

log = get_logger("broker.operations")


@dataclass(frozen=True)
class AdminAccess:
    actor: Actor
    admin: bool
    auditor: bool


class Operations:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        clock: Clock,
        provisioned: Callable[[Identity], Identity] | None = None,
        metrics: Metrics | None = None,
        revoker: RoleRevoker | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.notifier = Notifier(settings.notifications, db=self.db, audit=self.audit, clock=self.clock)
        self.revocations = Revocations(
            settings, db=self.db, audit=self.audit, notifier=self.notifier, revoker=revoker, clock=self.clock
        )
        self.elevation = Elevation(
            settings,
            db=self.db,
            audit=self.audit,
            notifier=self.notifier,
            revocations=self.revocations,
            clock=self.clock,
            provisioned=provisioned,
        )
        self.monitor = Monitor(
            settings.alerts,
            db=self.db,
            audit=self.audit,
            metrics=self.metrics,
            notify=self.notifier.enqueue,
            clock=self.clock,
        )
        self.audit.observers.append(self.monitor.observe)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ who may administer

    def authorize(self, identity: Identity, *, change: bool, ctx: Context, action: str) -> AdminAccess:
        """Admins read and change; auditors read. Changes need ``admin.change_mfa``; reads ``admin.read_mfa``."""
        config = self.settings.admin
        admin = bool(identity.groups.intersection(config.admin_groups))
        auditor = bool(identity.groups.intersection(config.auditor_groups))
        needed = config.change_mfa if change else config.read_mfa
        error: BrokerError | None = None
        if not (admin or (auditor and not change)):
            error = AccessDenied(
                "This needs the broker's administrator role." if change else "This needs an administrator or auditor.",
                reason="not_admin" if change or not auditor else "not_auditor",
            )
        elif identity.mfa.level < needed:
            error = MfaRequired(
                f"Administrative {'changes' if change else 'access'} need a {needed.label.replace('_', '-')} sign-in.",
                reason="admin_mfa_insufficient",
            )
        if error is not None:
            raise self.audit.deny(self.db, error, event="admin", identity=identity, ctx=ctx, detail={"action": action})
        return AdminAccess(Actor.person(identity), admin, auditor)

    # ------------------------------------------------------------ reading

    def sessions(self, *, principal: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            principal_id = self._principal_id(session, principal)
            if principal is not None and principal_id is None:
                return []
            rows = queries.list_sessions(session, principal_id=principal_id, now=self.clock(), limit=limit)
            return [
                {
                    "id_hmac": r.id_hmac[:16],
                    "principal_id": r.principal_id,
                    "principal": (r.identity or {}).get("email") or (r.identity or {}).get("username"),
                    "store": (r.identity or {}).get("store"),
                    "created_at": r.created_at.isoformat(),
                    "last_seen_at": r.last_seen_at.isoformat(),
                    "expires_at": r.expires_at.isoformat(),
                    "client_ip": r.client_ip,
                }
                for r in rows
            ]

    def issuances(
        self, *, principal: str | None = None, role: str | None = None, live: bool = False, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            principal_id = self._principal_id(session, principal)
            if principal is not None and principal_id is None:
                return []
            rows = queries.find_issuances(
                session,
                principal_id=principal_id,
                role_name=role,
                live_at=self.clock() if live else None,
                limit=limit,
            )
            return [
                {
                    "id": r.id,
                    "principal_id": r.principal_id,
                    "source_identity": r.source_identity,
                    "role": r.role_name,
                    "channel": r.channel,
                    "access_key_id": r.access_key_id,
                    "issued_at": r.issued_at.isoformat(),
                    "expires_at": r.expires_at.isoformat(),
                    "revoked_at": r.revoked_at.isoformat() if r.revoked_at else None,
                    "client_ip": r.client_ip,
                }
                for r in rows
            ]

    def requests(
        self, *, status: str | None = None, role: str | None = None, principal: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            principal_id = self._principal_id(session, principal)
            if principal is not None and principal_id is None:
                return []
            rows = queries.list_access_requests(
                session, status=status, role_name=role, principal_id=principal_id, limit=limit
            )
            return [RequestView.of(r).to_json() for r in rows]

    def audit_events(
        self,
        *,
        event: str | None = None,
        principal: str | None = None,
        outcome: str | None = None,
        reason: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        with self.db.transaction() as session:
            rows = queries.search_audit_events(
                session,
                event=event,
                principal=principal,
                outcome=outcome,
                reason=reason,
                since=since,
                until=until,
                limit=limit,
            )
            return [
                {
                    "seq": r.seq,
                    "occurred_at": r.occurred_at.isoformat(),
                    "event": r.event,
                    "outcome": r.outcome,
                    "reason": r.reason,
                    "principal": r.principal,
                    "store": r.store,
                    "channel": r.channel,
                    "client_ip": r.client_ip,
                    "request_id": r.request_id,
                    "detail": r.detail,
                }
                for r in rows
            ]

    def export_audit(self, out: IO[str]) -> int:
        with self.db.transaction() as session:
            return export_jsonl(session, out)

    def report(self, *, days: int) -> dict[str, Any]:
        return access_report(self.settings, self.db, now=self.clock(), days=days)

    def record_admin_read(self, actor: Actor, action: str, ctx: Context, detail: dict[str, Any] | None = None) -> None:
        """Reads of the audit trail and exports are themselves audited (who looked, during an incident)."""
        self.audit.record(
            self.db,
            event="admin",
            outcome="ok",
            reason=action,
            principal=actor.name,
            store=actor.store,
            ctx=ctx,
            detail=detail or {},
        )

    @staticmethod
    def _principal_id(session: Any, principal: str | None) -> int | None:
        if principal is None:
            return None
        found = queries.find_principals(session, name=principal)
        return found[0].id if len(found) == 1 else None

    # ------------------------------------------------------------ the background worker

    def run_once(self) -> dict[str, int]:
        """One pass: alert rules, request/grant sweep, webhook deliveries. Safe in every process at once."""
        alerts = self.monitor.process()
        swept = self.elevation.sweep()
        sent = self.notifier.deliver_due()
        return {"alerts": alerts, "webhooks_sent": sent, **swept}

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="broker-operations", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _loop(self) -> None:
        interval = self.settings.alerts.worker_interval_seconds
        while not self._stop.wait(interval):
            try:
                self.run_once()
            except Exception as exc:  # keep the worker alive; the next pass retries
                log.warning("operations pass failed", error=type(exc).__name__)


def build_revoker(aws: AwsSettings) -> RoleRevoker | None:
    """The IAM client for revocation; None in web_identity mode unless an IAM endpoint is configured."""
    if aws.mode == "web_identity" and aws.iam_endpoint_url is None:
        # The broker holds no AWS key in this mode: revocations are recorded but not written to IAM
        # (docs/operations.md, "Revocation without AWS keys").
        return None
    return RoleRevoker(aws)
