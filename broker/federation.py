"""The use cases after sign-in, top to bottom: decide, issue, audit (sign-in itself is :mod:`broker.signin`).

Routes and CLI commands call these; these call policy, AWS and the audit trail. Every refusal is audited
with its reason before it is raised, and credentials leave only after their issuance row and audit event
have committed together (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from broker.audit import AuditTrail, Clock, Context, utcnow
from broker.aws import console
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.connectors.base import Connector
from broker.connectors.registry import build_connectors
from broker.discovery import Discovery
from broker.errors import AccessDenied, AuditUnavailable, BrokerError, MfaRequired, NotFound, ServiceUnavailable
from broker.identity import Channel, Credentials, Identity
from broker.keys import Keys
from broker.mfa.service import MfaService
from broker.policy import (
    AccessRequest,
    ActiveGrant,
    Decision,
    decide,
    effective_duration,
    mfa_shortfall,
    visible_roles,
)
from broker.scim.directory import Directory
from broker.settings import RoleConfig, Settings
from broker.signin.sessions import CurrentSession, Sessions, SignedIn
from broker.store import queries
from broker.store.db import Database


@dataclass(frozen=True)
class RoleView:
    """What the portal shows for one role the user may use."""

    role: RoleConfig
    usable: bool
    max_duration_seconds: int
    missing: str | None
    # The identity's OIDC provider can be asked for the missing strength (a step-up) when the role is opened.
    step_up: bool = False


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
        # One connector per identity store (broker.connectors.registry); sign-in itself is broker.signin.
        self.connector_registry = build_connectors(settings, clock=lambda: self.clock().timestamp())
        self.local_connectors = self.connector_registry.local
        self.oidc_connectors = self.connector_registry.oidc
        self.saml_connectors = self.connector_registry.saml
        self.ldap_connectors = self.connector_registry.ldap
        self.connectors: dict[str, Connector] = self.connector_registry.by_name
        # Home realm discovery: which store owns an e-mail address's domain.
        self.discovery = Discovery(settings)
        # Factors the broker holds itself (TOTP, WebAuthn, recovery codes): step-up after any sign-in.
        self.mfa = MfaService(settings, db=db, keys=self.keys, audit=self.audit, clock=lambda: self.clock())
        # People and groups provisioned over SCIM: their state and groups count at every decision.
        self.directory = Directory(settings.scim)
        self.sessions = Sessions(
            settings.session,
            db=db,
            audit=self.audit,
            keys=self.keys,
            directory=self.directory,
            clock=lambda: self.clock(),
        )

    # ------------------------------------------------------------ sessions (broker.signin.sessions)

    def session_hmac(self, session_id: str) -> str:
        return self.sessions.hmac(session_id)

    def csrf_token(self, session_id: str) -> str:
        return self.sessions.csrf_token(session_id)

    def start_session(
        self,
        identity: Identity,
        ctx: Context,
        *,
        previous_session: str | None,
        event: str = "login",
        detail: dict[str, object] | None = None,
    ) -> SignedIn:
        return self.sessions.start(identity, ctx, previous_session=previous_session, event=event, detail=detail)

    def current_session(self, session_id: str | None) -> CurrentSession:
        return self.sessions.current(session_id)

    # ------------------------------------------------------------ roles and issuance

    def provisioned(self, identity: Identity) -> Identity:
        """The identity as provisioning has it now (SCIM groups; AccessDenied when deprovisioned)."""
        if not self.directory.governs(identity.store):
            return identity
        with self.db.transaction() as session:
            return self.directory.resolve(session, identity)

    def roles_for(self, identity: Identity) -> list[RoleView]:
        try:
            identity = self.provisioned(identity)
        except AccessDenied:
            return []
        views = []
        for role in visible_roles(identity, self.settings.roles):
            missing = None
            shortfall = mfa_shortfall(identity, role, self.clock())
            if shortfall is not None:
                missing = f"needs {role.mfa.label.replace('_', '-')} sign-in"
                if shortfall[0] == "mfa_stale":
                    missing += f" within the last {role.mfa_max_age_minutes} minutes"
            ceiling = effective_duration(role, role.max_duration_seconds, role_chaining=self.settings.aws.role_chaining)
            oidc = self.oidc_connectors.get(identity.store)
            step_up = bool(missing and oidc and oidc.step_up_acr_values(role.mfa))
            views.append(RoleView(role, missing is None, ceiling, missing, step_up=step_up))
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
        audit_detail: dict[str, Any] | None = None,
    ) -> Issued:
        """Decide, call STS, then commit the issuance and its audit event together, or return nothing.

        ``audit_detail`` adds to every audit event of this issuance (e.g. a token exchange's ``act`` chain).
        """
        with self.db.transaction() as session:
            disabled = queries.principal_disabled(session, store=identity.store, subject=identity.subject)
        if disabled:
            # Checked at every issuance, whatever the channel: a disabled person's sessions, CLI sign-ins and
            # tokens may outlive the moment they were disabled, their credentials may not.
            raise self.audit.deny(
                self.db,
                AccessDenied("This account is disabled. Ask an administrator.", reason="principal_disabled"),
                event="credentials",
                identity=identity,
                channel=channel.value,
                ctx=ctx,
                detail={"role": role},
            )
        try:
            identity = self.provisioned(identity)
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event="credentials",
                identity=identity,
                channel=channel.value,
                ctx=ctx,
                detail={"role": role},
            ) from None
        request = AccessRequest(
            role=role,
            channel=channel,
            duration_seconds=duration_seconds,
            client_ip=ctx.client_ip,
            role_chaining=self.settings.aws.role_chaining,
        )
        decision = decide(
            identity, self.settings.roles, request, self.clock(), active_grants=self.active_grants(identity, role)
        )
        audit_args: dict[str, Any] = {
            "event": "credentials",
            "identity": identity,
            "channel": channel.value,
            "ctx": ctx,
        }
        if not decision.allowed:
            error: BrokerError
            if decision.reason in ("mfa_insufficient", "mfa_stale"):
                error = (
                    MfaRequired(
                        f"This role needs a {decision.role.mfa.label.replace('_', '-')} sign-in "
                        "(multi-factor). Sign in again with a stronger factor, or confirm with your security key "
                        "or authenticator app at /mfa/verify.",
                        reason=decision.reason,
                    )
                    if decision.role
                    else MfaRequired()
                )
            else:
                error = AccessDenied(reason=decision.reason)
            raise self.audit.deny(
                self.db,
                error,
                **audit_args,
                detail={"role": role, "why": list(decision.reasons), **(audit_detail or {})},
            )
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
            raise self.audit.deny(self.db, exc, **audit_args, detail={"role": role, **(audit_detail or {})}) from None
        now = self.clock()
        try:
            with self.db.transaction() as session:
                issuance_id = queries.insert_issuance(
                    session,
                    principal_id=queries.touch_principal(session, identity=identity, now=now).id,
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
                        "issuance_id": issuance_id,
                        "break_glass": identity.break_glass,
                        "why": list(decision.reasons),
                        "access_request_id": decision.grant_request_id,
                        **(audit_detail or {}),
                    },
                )
        except ServiceUnavailable as exc:
            # The credentials exist at AWS but are never handed out: no audit row, no credentials.
            raise AuditUnavailable() from exc
        return Issued(credentials, decision, issuance_id)

    def active_grants(self, identity: Identity, role: str) -> tuple[ActiveGrant, ...]:
        """Open just-in-time windows (``broker.elevation``), read only for roles that need a request."""
        config = self.settings.role(role)
        if config is None or config.requires_request is None:
            return ()
        with self.db.transaction() as session:
            rows = queries.open_grants_for(session, store=identity.store, subject=identity.subject, now=self.clock())
            return tuple(ActiveGrant(r.role_name, r.id, r.grant_ends_at) for r in rows if r.grant_ends_at)

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
