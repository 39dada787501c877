"""Targeted revocation: one issuance, all of a person's sessions, or every session of a role.

The broker marks the rows revoked (issuances, and for a person their broker sessions, so they are signed out
everywhere), then writes an inline deny policy on each affected IAM role (``broker.aws.revoke``) so the STS
credentials already handed out stop working: for a person, conditioned on ``aws:SourceIdentity`` (their
principal, which the broker sets on every AssumeRole) and ``aws:TokenIssueTime``; for a whole role, on the
issue time only. Other people's sessions of the role are untouched by a personal revocation.

IAM cannot target a single access key, so revoking one issuance denies that person's sessions of that role
issued up to and including it (their later sessions keep working). Every revocation is one audit event and
one ``revocations`` row naming the roles AWS accepted and those it refused (retry with the same command).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import BrokerError, InvalidRequest, NotFound
from broker.identity import Identity
from broker.settings import Settings
from broker.store import queries
from broker.store.db import Database

if TYPE_CHECKING:
    from broker.aws.revoke import RoleRevoker
    from broker.notify import Notifier


@dataclass(frozen=True)
class Actor:
    """Who performs an administrative action: a signed-in person, an operator at the CLI, or the broker."""

    name: str
    store: str | None = None
    identity: Identity | None = None

    @classmethod
    def person(cls, identity: Identity) -> Actor:
        return cls(identity.principal, identity.store, identity)

    @classmethod
    def operator(cls, login: str) -> Actor:
        return cls(f"operator:{login}", "cli")

    @classmethod
    def system(cls) -> Actor:
        return cls("system:broker", "broker")


@dataclass(frozen=True)
class RevocationOutcome:
    revocation_id: int
    scope: str
    issuances: list[int]
    sessions: int
    aws_applied: list[str] = field(default_factory=list)
    aws_failed: list[dict[str, str]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "revocation_id": self.revocation_id,
            "scope": self.scope,
            "issuances": self.issuances,
            "sessions": self.sessions,
            "aws": {"applied": self.aws_applied, "failed": self.aws_failed},
        }


@dataclass(frozen=True)
class _Target:
    """One deny statement to write: a role, the cut-off, and whom it names (None: the whole role)."""

    role_arn: str
    role_name: str
    source_identity: str | None


class Revocations:
    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        notifier: Notifier,
        revoker: RoleRevoker | None,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.notifier = notifier
        self.revoker = revoker
        self.clock = clock

    # ------------------------------------------------------------ the three scopes

    def revoke_issuance(self, actor: Actor, issuance_id: int, *, reason: str, ctx: Context) -> RevocationOutcome:
        now = self.clock()
        try:
            with self.db.transaction() as session:
                row = queries.get_issuance(session, issuance_id=issuance_id)
                if row is None:
                    raise NotFound("No such issuance.", reason="issuance_unknown")
                queries.mark_issuances_revoked(session, ids=[row.id], now=now)
                principal_id, target = row.principal_id, _Target(row.role_arn, row.role_name, row.source_identity)
                # STS stamps the token before the broker records issued_at; one second later covers it.
                before = row.issued_at.replace(microsecond=0) + timedelta(seconds=1)
        except NotFound as error:
            # Audited after the transaction ended: on SQLite the audit write would wait on it.
            raise self._refuse(actor, error, ctx, issuance_id) from None
        return self._finish(
            actor,
            "issuance",
            [target],
            before=before,
            issuances=[issuance_id],
            sessions=0,
            reason=reason,
            ctx=ctx,
            principal_id=principal_id,
            issuance_id=issuance_id,
        )

    def revoke_principal(
        self,
        actor: Actor,
        principal: str,
        *,
        reason: str,
        ctx: Context,
        role: str | None = None,
        sign_out: bool = True,
    ) -> RevocationOutcome:
        """Revoke a person's live credentials (of one role, or all) and, with ``sign_out``, their sessions."""
        now = self.clock()
        with self.db.transaction() as session:
            found = queries.find_principals(session, name=principal)
        if len(found) != 1:
            # Audited outside the transaction: on SQLite the audit write would wait on it.
            error = NotFound(f"No single principal named {principal!r}.", reason="principal_unknown")
            raise self._refuse(actor, error, ctx, principal)
        with self.db.transaction() as session:
            principal_id = found[0].id
            live = queries.find_issuances(session, principal_id=principal_id, role_name=role, live_at=now, limit=10000)
            ids = [i.id for i in live]
            queries.mark_issuances_revoked(session, ids=ids, now=now)
            sessions = 0
            if sign_out:
                # Browser sessions and CLI sign-ins (refresh-token families) both end.
                sessions = queries.revoke_sessions(session, principal_id=principal_id, now=now)
                sessions += queries.revoke_refresh_families_of(
                    session, principal_id=principal_id, now=now, reason="principal_revoked"
                )
            targets = {_Target(i.role_arn, i.role_name, i.source_identity) for i in live}
            if role is not None and not live:
                # No recorded live credentials, but one may be in flight: deny up to now anyway.
                config = self.settings.role(role)
                source = _source_identity(found[0].email or found[0].username)
                if config is not None:
                    targets.add(_Target(config.role_arn, config.name, source))
        return self._finish(
            actor,
            "principal" if role is None else "grant",
            sorted(targets, key=lambda t: (t.role_name, t.source_identity or "")),
            before=now,
            issuances=ids,
            sessions=sessions,
            reason=reason,
            ctx=ctx,
            principal_id=principal_id,
            role_name=role,
        )

    def revoke_role(self, actor: Actor, role: str, *, reason: str, ctx: Context) -> RevocationOutcome:
        """Every live session of the role, whoever holds it (the console's "Revoke active sessions")."""
        config = self.settings.role(role)
        if config is None:
            raise self._refuse(actor, NotFound(f"No role named {role!r}.", reason="role_unknown"), ctx, role)
        now = self.clock()
        with self.db.transaction() as session:
            live = queries.find_issuances(session, role_name=role, live_at=now, limit=100000)
            ids = [i.id for i in live]
            queries.mark_issuances_revoked(session, ids=ids, now=now)
        return self._finish(
            actor,
            "role",
            [_Target(config.role_arn, config.name, None)],
            before=now,
            issuances=ids,
            sessions=0,
            reason=reason,
            ctx=ctx,
            role_name=role,
        )

    def set_disabled(
        self, actor: Actor, principal: str, *, disabled: bool, reason: str, ctx: Context
    ) -> dict[str, Any]:
        """Disable (and revoke everything of) a principal, or enable them again."""
        with self.db.transaction() as session:
            found = queries.find_principals(session, name=principal)
        if len(found) != 1:
            # Audited outside the transaction: on SQLite the audit write would wait on it.
            error = NotFound(f"No single principal named {principal!r}.", reason="principal_unknown")
            raise self._refuse(actor, error, ctx, principal)
        with self.db.transaction() as session:
            queries.set_principal_disabled(session, principal_id=found[0].id, disabled=disabled)
            self.audit.append(
                session,
                event="admin.principal",
                outcome="ok",
                reason="disabled" if disabled else "enabled",
                principal=actor.name,
                store=actor.store,
                ctx=ctx,
                detail={"target": principal, "why": reason},
            )
        result: dict[str, Any] = {"principal": principal, "disabled": disabled}
        if disabled:
            result["revocation"] = self.revoke_principal(
                actor, principal, reason=f"disabled: {reason}", ctx=ctx
            ).to_json()
        return result

    # ------------------------------------------------------------ shared

    def _refuse(self, actor: Actor, error: BrokerError, ctx: Context, target: object) -> BrokerError:
        return self.audit.deny(
            self.db,
            error,
            event="revocation",
            principal=actor.name,
            store=actor.store,
            ctx=ctx,
            detail={"target": str(target)[:256]},
        )

    def _finish(
        self,
        actor: Actor,
        scope: str,
        targets: list[_Target],
        *,
        before: Any,
        issuances: list[int],
        sessions: int,
        reason: str,
        ctx: Context,
        principal_id: int | None = None,
        issuance_id: int | None = None,
        role_name: str | None = None,
    ) -> RevocationOutcome:
        applied: list[str] = []
        failed: list[dict[str, str]] = []
        statements: list[dict[str, Any]] = []
        for target in targets:
            if self.revoker is None:
                failed.append({"role_arn": target.role_arn, "reason": "iam_not_configured"})
                continue
            config = self.settings.role(target.role_name)
            try:
                result = self.revoker.deny_sessions(
                    target.role_arn,
                    before=before,
                    source_identity=target.source_identity,
                    now=self.clock(),
                    fallback_max_session_seconds=config.max_duration_seconds if config else 43200,
                )
            except BrokerError as exc:
                failed.append({"role_arn": target.role_arn, "reason": exc.reason})
                continue
            applied.append(target.role_arn)
            statements.append({"role_arn": target.role_arn, "sid": result.statement["Sid"], "pruned": result.pruned})
        sources = sorted({t.source_identity for t in targets if t.source_identity})
        with self.db.transaction() as session:
            row = queries.record_revocation(
                session,
                scope=scope,
                role_name=role_name,
                principal_id=principal_id,
                issuance_id=issuance_id,
                source_identity=sources[0] if len(sources) == 1 else None,
                revoked_before=before,
                actor=actor.name,
                reason=reason[:1000],
                created_at=self.clock(),
                aws_applied=applied,
                aws_failed=failed,
            )
            detail = {
                "scope": scope,
                "revocation_id": row.id,
                "role": role_name,
                "source_identities": sources,
                "revoked_before": before.isoformat(),
                "issuances": issuances,
                "sessions": sessions,
                "aws_applied": applied,
                "aws_failed": failed,
                "statements": statements,
                "why": reason[:1000],
            }
            self.audit.append(
                session,
                event="revocation",
                outcome="partial" if failed else "ok",
                reason="aws_not_applied" if failed else f"revoked_{scope}",
                principal=actor.name,
                store=actor.store,
                ctx=ctx,
                detail=detail,
            )
            who = ", ".join(sources) or "everyone"
            self.notifier.enqueue(
                session,
                "revocation",
                f":no_entry: {actor.name} revoked {scope} access ({who}"
                f"{', role ' + role_name if role_name else ''}): {reason[:200]}"
                + (f" - NOT applied in AWS for {len(failed)} role(s)" if failed else ""),
                detail,
            )
            revocation_id = row.id
        return RevocationOutcome(revocation_id, scope, issuances, sessions, applied, failed)


def _source_identity(principal: str) -> str:
    from broker.policy import sts_name

    return sts_name(principal)


def require_reason(reason: str | None) -> str:
    """Administrative changes carry a reason for the audit trail (an incident number, a ticket)."""
    text = (reason or "").strip()
    if not text or len(text) > 1000 or not text.isprintable():
        raise InvalidRequest("Give a reason (1 to 1000 printable characters).", reason="reason_missing")
    return text
