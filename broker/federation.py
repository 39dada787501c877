"""The use cases, top to bottom: sign in, keep a session, decide, issue, audit.

Routes and CLI commands call these; these call connectors, policy, AWS and the audit trail. Every refusal
is audited with its reason before it is raised, and credentials leave only after their issuance row and
audit event have committed together (fail closed).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.audit import AuditTrail, Clock, Context, utcnow
from broker.aws import console
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.connectors.base import Connector
from broker.connectors.local import TOTP_STEP_SECONDS, LocalConnector
from broker.errors import (
    AccessDenied,
    AuditUnavailable,
    BrokerError,
    LoginRequired,
    MfaRequired,
    NotFound,
    ServiceUnavailable,
)
from broker.identity import Channel, Credentials, Identity
from broker.keys import Keys
from broker.policy import AccessRequest, Decision, decide, effective_duration, visible_roles
from broker.settings import RoleConfig, Settings
from broker.store import queries
from broker.store.db import Database


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    identity: Identity


@dataclass(frozen=True)
class CurrentSession:
    id_hmac: str
    principal_id: int
    identity: Identity
    expires_at: datetime


@dataclass(frozen=True)
class RoleView:
    """What the portal shows for one role the user may use."""

    role: RoleConfig
    usable: bool
    max_duration_seconds: int
    missing: str | None


@dataclass(frozen=True)
class Issued:
    credentials: Credentials
    decision: Decision
    issuance_id: int


class Broker:
    """The broker's use-case layer, built once per process from the validated settings."""

    def __init__(self, settings: Settings, *, db: Database, sts: Sts, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.db = db
        self.sts = sts
        self.clock = clock
        self.keys = Keys(settings.secret_key)
        self.audit = AuditTrail(self.keys, clock)
        self.local_connectors = {
            s.name: LocalConnector(s, issuer=settings.public_url) for s in settings.identity_stores if s.type == "local"
        }
        self.connectors: dict[str, Connector] = {}
        self.connectors.update(self.local_connectors)

    def sign_in_options(self) -> list[Connector]:
        """Every configured identity store, in configuration order, for the sign-in page."""
        return list(self.connectors.values())

    # ------------------------------------------------------------ sessions

    def session_hmac(self, session_id: str) -> str:
        return self.keys.mac("session", session_id)

    def csrf_token(self, session_id: str) -> str:
        return self.keys.mac("csrf", session_id)[:43]

    def start_session(
        self, identity: Identity, ctx: Context, *, event: str = "login", detail: dict[str, object] | None = None
    ) -> SignedIn:
        """Create a fresh session (a new id at every sign-in: no fixation) and audit the sign-in."""
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        absolute = now + timedelta(hours=self.settings.session.absolute_timeout_hours)
        with self.db.transaction() as session:
            principal = queries.upsert_principal(session, identity=identity, now=now)
            if principal.disabled:
                raise self.audit.deny(
                    self.db,
                    AccessDenied("This account is disabled.", reason="principal_disabled"),
                    event=event,
                    identity=identity,
                    ctx=ctx,
                )
            queries.create_session(
                session,
                id_hmac=self.session_hmac(session_id),
                principal=principal,
                identity=identity,
                now=now,
                expires_at=absolute,
                client_ip=ctx.client_ip,
                user_agent=ctx.user_agent,
            )
            self.audit.append(
                session,
                event=event,
                outcome="ok",
                reason="break_glass" if identity.break_glass else "authenticated",
                identity=identity,
                ctx=ctx,
                detail={
                    "mfa": identity.mfa.level.label,
                    "amr": list(identity.mfa.methods),
                    "break_glass": identity.break_glass,
                    **(detail or {}),
                },
            )
        return SignedIn(session_id, identity)

    def current_session(self, session_id: str | None) -> CurrentSession:
        """The live session for this id, or LoginRequired (unknown, revoked, idle too long, too old)."""
        if not session_id or len(session_id) > 128:
            raise LoginRequired()
        now = self.clock()
        id_hmac = self.session_hmac(session_id)
        idle = timedelta(minutes=self.settings.session.idle_timeout_minutes)
        with self.db.transaction() as session:
            row = queries.get_session(session, id_hmac=id_hmac)
            if row is None or row.revoked_at is not None or row.expires_at <= now or row.last_seen_at + idle <= now:
                if row is not None:
                    queries.delete_session(session, id_hmac=id_hmac)
                raise LoginRequired()
            queries.touch_session(session, id_hmac=id_hmac, now=now)
            return CurrentSession(id_hmac, row.principal_id, Identity.from_json(row.identity), row.expires_at)

    def logout(self, session_id: str | None, ctx: Context) -> None:
        if not session_id:
            return
        id_hmac = self.session_hmac(session_id)
        with self.db.transaction() as session:
            row = queries.get_session(session, id_hmac=id_hmac)
            if row is None:
                return
            identity = Identity.from_json(row.identity)
            queries.delete_session(session, id_hmac=id_hmac)
            self.audit.append(session, event="logout", outcome="ok", reason="user_logout", identity=identity, ctx=ctx)

    # ------------------------------------------------------------ break-glass sign-in

    def login_local(self, store: str, username: str, password: str, totp_code: str, ctx: Context) -> SignedIn:
        connector = self.local_connectors.get(store)
        if connector is None:
            raise NotFound("There is no such sign-in option.")
        try:
            login = connector.authenticate(username, password, totp_code, now=self.clock().timestamp())
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event="login",
                principal=username[:256],
                store=store,
                ctx=ctx,
                detail={"break_glass": True},
            ) from None
        try:
            with self.db.transaction() as session:
                # A TOTP code works once: the (account, time step) pair is one-time (RFC 6238 section 5.2).
                queries.consume_once(
                    session,
                    kind="totp",
                    key_hmac=self.keys.mac("totp", f"{store}:{username}:{login.totp_step}"),
                    expires_at=self.clock() + timedelta(seconds=TOTP_STEP_SECONDS * 4),
                )
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="login", identity=login.identity, ctx=ctx, detail={"break_glass": True}
            ) from None
        return self.start_session(login.identity, ctx)

    # ------------------------------------------------------------ roles and issuance

    def roles_for(self, identity: Identity) -> list[RoleView]:
        views = []
        for role in visible_roles(identity, self.settings.roles):
            missing = None
            if identity.mfa.level < role.mfa:
                missing = f"needs {role.mfa.label.replace('_', '-')} sign-in"
            ceiling = effective_duration(role, role.max_duration_seconds, role_chaining=self.settings.aws.role_chaining)
            views.append(RoleView(role, missing is None, ceiling, missing))
        return views

    def issue(
        self,
        identity: Identity,
        *,
        role: str,
        channel: Channel,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> Issued:
        """Decide, call STS, then commit the issuance and its audit event together, or return nothing."""
        request = AccessRequest(
            role=role,
            channel=channel,
            duration_seconds=duration_seconds,
            client_ip=ctx.client_ip,
            role_chaining=self.settings.aws.role_chaining,
        )
        decision = decide(identity, self.settings.roles, request, self.clock())
        audit_args: dict[str, Any] = {
            "event": "credentials",
            "identity": identity,
            "channel": channel.value,
            "ctx": ctx,
        }
        if not decision.allowed:
            error: BrokerError
            if decision.reason == "mfa_insufficient":
                error = (
                    MfaRequired(
                        f"This role needs a {decision.role.mfa.label.replace('_', '-')} sign-in "
                        "(multi-factor). Sign in again with a stronger factor.",
                        reason=decision.reason,
                    )
                    if decision.role
                    else MfaRequired()
                )
            else:
                error = AccessDenied(reason=decision.reason)
            raise self.audit.deny(self.db, error, **audit_args, detail={"role": role, "why": list(decision.reasons)})
        assert decision.role is not None
        try:
            credentials = self.sts.assume_role(
                AssumeRoleRequest(
                    role_arn=decision.role.role_arn,
                    role_session_name=decision.role_session_name,
                    source_identity=decision.source_identity,
                    duration_seconds=decision.duration_seconds,
                    tags=decision.tags,
                    transitive_tag_keys=decision.transitive_tag_keys,
                    session_policy=decision.session_policy,
                    policy_arns=decision.policy_arns,
                )
            )
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, **audit_args, detail={"role": role}) from None
        now = self.clock()
        try:
            with self.db.transaction() as session:
                principal = queries.upsert_principal(session, identity=identity, now=now)
                row = queries.record_issuance(
                    session,
                    principal_id=principal.id,
                    session_hmac=session_hmac,
                    role_name=decision.role.name,
                    role_arn=decision.role.role_arn,
                    account=decision.role.account,
                    channel=channel.value,
                    access_key_id=credentials.access_key_id,
                    source_identity=decision.source_identity,
                    role_session_name=decision.role_session_name,
                    session_tags=decision.tags,
                    transitive_tag_keys=list(decision.transitive_tag_keys),
                    policy_digest=decision.policy_digest,
                    requested_duration_seconds=duration_seconds,
                    granted_duration_seconds=decision.duration_seconds,
                    issued_at=now,
                    expires_at=credentials.expiration,
                    client_ip=ctx.client_ip,
                    user_agent=ctx.user_agent,
                )
                self.audit.append(
                    session,
                    outcome="ok",
                    reason="issued",
                    **audit_args,
                    detail={
                        "role": decision.role.name,
                        "role_arn": decision.role.role_arn,
                        "access_key_id": credentials.access_key_id,
                        "source_identity": decision.source_identity,
                        "role_session_name": decision.role_session_name,
                        "duration_seconds": decision.duration_seconds,
                        "issuance_id": row.id,
                        "break_glass": identity.break_glass,
                        "why": list(decision.reasons),
                    },
                )
                issuance_id = row.id
        except ServiceUnavailable as exc:
            # The credentials exist at AWS but are never handed out: no audit row, no credentials.
            raise AuditUnavailable() from exc
        return Issued(credentials, decision, issuance_id)

    def console_url(
        self,
        identity: Identity,
        *,
        role: str,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> str:
        endpoint = self.settings.aws.federation_endpoint
        if not endpoint:
            raise NotFound(
                "Console sign-in is not configured on this broker (aws.federation_endpoint).",
                reason="console_not_configured",
            )
        issued = self.issue(
            identity,
            role=role,
            channel=Channel.CONSOLE,
            ctx=ctx,
            duration_seconds=duration_seconds,
            session_hmac=session_hmac,
        )
        try:
            return console.signin_url(
                issued.credentials,
                endpoint=endpoint,
                destination=self.settings.aws.console_destination,
                issuer=self.settings.public_url,
                session_duration=None if self.settings.aws.role_chaining else issued.decision.duration_seconds,
            )
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event="console",
                identity=identity,
                channel="console",
                ctx=ctx,
                detail={"role": role, "issuance_id": issued.issuance_id},
            ) from None
