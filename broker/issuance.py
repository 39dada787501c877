"""Issuance: decide, call STS, and commit the issuance row with its audit event, or hand out nothing.

Every channel that hands out AWS credentials comes here: the portal and the console link, the CLI API, token
exchange and device certificates. A disabled person, a deprovisioned person or a refused decision gets an
audit event and no credentials; credentials leave only after their issuance row and audit event have
committed together (fail closed, docs/security.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from broker.audit import AuditTrail
from broker.aws import console
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.context import Clock, Context
from broker.errors import AccessDenied, AuditUnavailable, BrokerError, MfaRequired, NotFound, ServiceUnavailable
from broker.identity import Channel, Credentials, Identity
from broker.policy import AccessRequest, ActiveGrant, Decision, decide, effective_duration, mfa_shortfall, visible_roles
from broker.scim.directory import Directory
from broker.settings import RoleConfig, Settings
from broker.store import queries
from broker.store.db import Database

# The open just-in-time windows of an identity for one role (``Elevation.active_grants``).
ActiveGrants = Callable[[Identity, str], tuple[ActiveGrant, ...]]


@dataclass(frozen=True)
class Issued:
    credentials: Credentials
    decision: Decision
    issuance_id: int


@dataclass(frozen=True)
class RoleView:
    """What the portal shows for one role the user may use."""

    role: RoleConfig
    usable: bool
    max_duration_seconds: int
    missing: str | None
    # The identity's OIDC provider can be asked for the missing strength (a step-up) when the role is opened.
    step_up: bool = False


class Issue(Protocol):
    """``Issuance.issue``, as the channels that hand out credentials take it."""

    def __call__(
        self,
        identity: Identity,
        *,
        role: str,
        channel: Channel,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
        audit_detail: dict[str, Any] | None = None,
    ) -> Issued: ...


class Provisioned:
    """The identity as provisioning has it now: SCIM groups, and AccessDenied when deprovisioned.

    Read at every sign-in, every issuance and every access request, so a SCIM change counts at the next
    decision.
    """

    def __init__(self, directory: Directory, *, db: Database) -> None:
        self.directory = directory
        self.db = db

    def __call__(self, identity: Identity) -> Identity:
        if not self.directory.governs(identity.store):
            return identity
        with self.db.transaction() as session:
            return self.directory.resolve(session, identity)


class Issuance:
    """Decides and issues AWS credentials for one identity and one role, on any channel."""

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        audit: AuditTrail,
        sts: Sts,
        clock: Clock,
        provisioned: Callable[[Identity], Identity],
        active_grants: ActiveGrants,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.sts = sts
        self.clock = clock
        self.provisioned = provisioned
        self.active_grants = active_grants

    def roles_for(
        self, identity: Identity, *, step_up: Callable[[Identity, RoleConfig], bool] | None = None
    ) -> list[RoleView]:
        """The roles this identity sees, whether each is usable now and what is missing (its MFA strength);
        ``step_up`` says whether the identity's provider can be asked for that strength."""
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
            can_step_up = bool(missing and step_up is not None and step_up(identity, role))
            views.append(RoleView(role, missing is None, ceiling, missing, step_up=can_step_up))
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
