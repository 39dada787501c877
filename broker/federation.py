"""Sign-in and the browser session: identity stores, step-up, and the session that follows.

The sign-in routes call these; these call connectors, the SCIM directory and the audit trail, and hand
issuance (a console link after a step-up) to ``broker.issuance``. Every refusal is audited with its reason
before it is raised.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.audit import AuditTrail, Clock, Context, utcnow
from broker.connectors.base import Connector
from broker.connectors.ldap import LdapConnector, audit_name
from broker.connectors.local import TOTP_STEP_SECONDS, LocalConnector
from broker.connectors.oidc import LOGIN_REQUEST_TTL_SECONDS, OidcConnector
from broker.connectors.saml import SamlConnector
from broker.discovery import Discovery
from broker.errors import (
    TOTP_REPLAY_MESSAGE,
    AccessDenied,
    AuthenticationFailed,
    BrokerError,
    InvalidRequest,
    LoginRequired,
    MfaRequired,
    NotFound,
    ReplayDetected,
)
from broker.identity import Channel, Identity, MfaLevel
from broker.issuance import Issuance, Issued
from broker.issuance import RoleView as RoleView  # what the portal lists, re-exported for the sign-in pages
from broker.keys import Keys
from broker.mfa.service import MfaService
from broker.policy import (
    grants,
    mfa_shortfall,
)
from broker.scim.directory import Directory
from broker.settings import LdapStoreConfig, OidcStoreConfig, RoleConfig, SamlStoreConfig, Settings
from broker.store import queries
from broker.store.db import Database

# What a disabled person reads, at sign-in and on the next page after being disabled.
DISABLED_MESSAGE = "This account is disabled. Ask an administrator to enable it again."


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    identity: Identity


@dataclass(frozen=True)
class OidcSignedIn:
    """A completed OIDC sign-in and what the browser asked for before it (a step-up's pending action)."""

    signed_in: SignedIn
    return_to: str
    pending: dict[str, Any] | None


@dataclass(frozen=True)
class CurrentSession:
    id_hmac: str
    principal_id: int
    identity: Identity
    expires_at: datetime


class Broker:
    """Sign-in and the browser session: identity stores, step-up, and the session that follows.

    Built once per process by the composition root (``broker.services``), which hands it the pieces it uses.
    Issuance lives in ``broker.issuance``; administration in ``broker.operations``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        db: Database,
        keys: Keys,
        audit: AuditTrail,
        issuance: Issuance,
        mfa: MfaService,
        directory: Directory,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self.db = db
        self.clock = clock
        self.keys = keys
        self.audit = audit
        # Decides and issues credentials (the console link after a step-up; ``provisioned`` at sign-in).
        self.issuance = issuance
        self.local_connectors = {
            s.name: LocalConnector(s, issuer=settings.public_url) for s in settings.identity_stores if s.type == "local"
        }
        self.connectors: dict[str, Connector] = {}
        self.connectors.update(self.local_connectors)
        self.oidc_connectors = {
            s.name: OidcConnector(
                s,
                redirect_uri=f"{settings.public_url}/oidc/{s.name}/callback",
                post_logout_redirect_uri=f"{settings.public_url}/signed-out",
                clock=lambda: self.clock().timestamp(),
            )
            for s in settings.identity_stores
            if isinstance(s, OidcStoreConfig)
        }
        self.connectors.update(self.oidc_connectors)
        self.saml_connectors = {
            s.name: SamlConnector(s, public_url=settings.public_url)
            for s in settings.identity_stores
            if isinstance(s, SamlStoreConfig)
        }
        self.connectors.update(self.saml_connectors)
        self.ldap_connectors = {
            s.name: LdapConnector(s) for s in settings.identity_stores if isinstance(s, LdapStoreConfig)
        }
        self.connectors.update(self.ldap_connectors)
        # Home realm discovery: which store owns an e-mail address's domain.
        self.discovery = Discovery(settings)
        # Factors the broker holds itself (TOTP, WebAuthn, recovery codes): step-up after any sign-in.
        self.mfa = mfa
        # People and groups provisioned over SCIM: their state and groups count at every decision.
        self.directory = directory

    def sign_in_options(self) -> list[Connector]:
        """Every configured identity store, in configuration order, for the sign-in page."""
        return list(self.connectors.values())

    # ------------------------------------------------------------ sessions

    def session_hmac(self, session_id: str) -> str:
        return self.keys.mac("session", session_id)

    def session_hmacs(self, session_id: str) -> list[str]:
        """The session id's HMAC under every listed root key: sessions started before a rotation live on."""
        return self.keys.macs("session", session_id)

    def csrf_token(self, session_id: str) -> str:
        return self.keys.mac("csrf", session_id)[:43]

    def csrf_matches(self, session_id: str, token: str) -> bool:
        """True if ``token`` is the CSRF token of ``session_id`` under any listed root key."""
        found = False
        for candidate in self.keys.macs("csrf", session_id):
            found |= hmac.compare_digest(candidate[:43], token)
        return found

    def start_session(
        self,
        identity: Identity,
        ctx: Context,
        *,
        previous_session: str | None,
        event: str = "login",
        detail: dict[str, object] | None = None,
    ) -> SignedIn:
        """Create a fresh session (a new id at every sign-in: no fixation) and audit the sign-in.

        Every sign-in names the browser's ``previous_session`` (its session cookie, if any): that session
        ends here, whoever it belonged to, so a planted or earlier session never outlives a sign-in.
        """
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        absolute = now + timedelta(hours=self.settings.session.absolute_timeout_hours)
        try:
            # A person their SCIM client deactivated, deleted or never provisioned does not get a session.
            self.provisioned(identity)
        except AccessDenied as exc:
            raise self.audit.deny(self.db, exc, event=event, identity=identity, ctx=ctx) from None
        with self.db.transaction() as session:
            if previous_session and len(previous_session) <= 128:
                previous = queries.find_session(session, id_hmacs=self.session_hmacs(previous_session))
                if previous is not None:
                    queries.delete_session(session, id_hmac=previous.id_hmac)
            principal = queries.touch_principal(session, identity=identity, now=now)
            if principal.disabled:
                raise self.audit.deny(
                    self.db,
                    AccessDenied(DISABLED_MESSAGE, reason="principal_disabled"),
                    event=event,
                    identity=identity,
                    ctx=ctx,
                )
            self.directory.link(session, identity, principal_id=principal.id, now=now)
            queries.create_session(
                session,
                id_hmac=self.session_hmac(session_id),
                principal_id=principal.id,
                identity=identity,
                now=now,
                expires_at=absolute,
                client_ip=ctx.client_ip,
                user_agent=ctx.user_agent,
                key_id=self.keys.current_id,
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
        id_hmacs = self.session_hmacs(session_id)
        idle = timedelta(minutes=self.settings.session.idle_timeout_minutes)
        with self.db.transaction() as session:
            row = queries.find_session(session, id_hmacs=id_hmacs)
            id_hmac = row.id_hmac if row is not None else id_hmacs[0]
            if row is None or row.revoked_at is not None or row.expires_at <= now or row.last_seen_at + idle <= now:
                disabled = (
                    row is not None
                    and row.revoked_at is not None
                    and queries.principal_id_disabled(session, principal_id=row.principal_id)
                )
                if row is not None and not disabled:
                    queries.delete_session(session, id_hmac=id_hmac)
                if disabled:
                    # Said at once, on the next page, rather than after another trip through the IdP.
                    raise AccessDenied(DISABLED_MESSAGE, reason="principal_disabled")
                raise LoginRequired()
            queries.touch_session(session, id_hmac=id_hmac, now=now)
            return CurrentSession(id_hmac, row.principal_id, Identity.from_json(row.identity), row.expires_at)

    def logout(self, session_id: str | None, ctx: Context) -> str | None:
        """End the local session; return the IdP's logout URL when its identity store offers one."""
        if not session_id:
            return None
        with self.db.transaction() as session:
            row = queries.find_session(session, id_hmacs=self.session_hmacs(session_id))
            if row is None:
                return None
            id_hmac = row.id_hmac
            identity = Identity.from_json(row.identity)
            queries.delete_session(session, id_hmac=id_hmac)
            self.audit.append(session, event="logout", outcome="ok", reason="user_logout", identity=identity, ctx=ctx)
        oidc = self.oidc_connectors.get(identity.store)
        return oidc.end_session_url() if oidc else None

    # ------------------------------------------------------------ break-glass sign-in

    def login_local(
        self,
        store: str,
        username: str,
        password: str,
        totp_code: str,
        ctx: Context,
        *,
        previous_session: str | None,
    ) -> SignedIn:
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
                    key_hmac=self.keys.macs("totp", f"{store}:{username}:{login.totp_step}"),
                    expires_at=self.clock() + timedelta(seconds=TOTP_STEP_SECONDS * 4),
                    message=TOTP_REPLAY_MESSAGE,
                )
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="login", identity=login.identity, ctx=ctx, detail={"break_glass": True}
            ) from None
        return self.start_session(login.identity, ctx, previous_session=previous_session)

    # ------------------------------------------------------------ directory (LDAP) sign-in

    def login_ldap(
        self, store: str, username: str, password: str, ctx: Context, *, previous_session: str | None
    ) -> SignedIn:
        """Password sign-in against a directory. The session's MFA level is ``none``: roles that need more
        ask for the broker's own factors (``/mfa/verify``). Guessing is limited by the web layer's per-account
        and per-address login limits, the same as for break-glass accounts."""
        connector = self.ldap_connectors.get(store)
        if connector is None:
            raise NotFound("There is no such sign-in option.")
        try:
            identity = connector.authenticate(username, password, now=self.clock().timestamp())
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event="login",
                principal=audit_name(username),
                store=store,
                ctx=ctx,
                detail={"protocol": "ldap", **getattr(exc, "detail", {})},
            ) from None
        return self.start_session(identity, ctx, previous_session=previous_session, detail={"protocol": "ldap"})

    # ------------------------------------------------------------ OIDC sign-in and step-up

    def oidc(self, store: str) -> OidcConnector:
        connector = self.oidc_connectors.get(store)
        if connector is None:
            raise NotFound("There is no such sign-in option.")
        return connector

    def begin_oidc_login(
        self,
        store: str,
        *,
        browser: str,
        return_to: str,
        pending: dict[str, Any] | None = None,
        login_hint: str | None = None,
    ) -> str:
        """Start an authorization request; state, nonce and PKCE verifier stay server-side, bound to the browser.

        A pending step-up asks for its ``acr_values`` with ``max_age=0`` so the IdP must authenticate afresh
        (OpenID Connect Core 1.0 section 3.1.2.1) rather than reuse its single sign-on session.
        """
        connector = self.oidc(store)
        acr_values = list(pending["acr_values"]) if pending else []
        request = connector.authorization_request(
            acr_values=acr_values, max_age=0 if pending else None, login_hint=login_hint
        )
        now = self.clock()
        with self.db.transaction() as session:
            queries.save_login_request(
                session,
                state_hmac=self.keys.mac("oidc-state", request.state),
                store=store,
                browser_hmac=self.keys.mac("browser", browser),
                data={**request.stored(), "return_to": return_to, "pending": pending},
                now=now,
                expires_at=now + timedelta(seconds=LOGIN_REQUEST_TTL_SECONDS),
            )
        return request.url

    def finish_oidc_login(
        self,
        store: str,
        params: dict[str, str],
        *,
        browser: str | None,
        previous_session: str | None,
        ctx: Context,
    ) -> OidcSignedIn:
        """Match the callback to its request (once, same browser, same store), verify, start a new session."""
        try:
            connector = self.oidc(store)
            state = params.get("state")
            if not state or len(state) > 256:
                raise InvalidRequest(
                    "The sign-in answer has no valid state. Start the sign-in again.", reason="oidc.state_missing"
                )
            now = self.clock()
            with self.db.transaction() as session:
                row = queries.take_login_request(session, state_hmac=self.keys.mac("oidc-state", state))
                found = (row.store, row.browser_hmac, row.expires_at, dict(row.data)) if row else None
            if found is None:
                raise ReplayDetected(
                    "This sign-in answer was already used, or the sign-in was not started here. Start again.",
                    reason="oidc.state_unknown",
                )
            row_store, browser_hmac, expires_at, data = found
            if row_store != store:
                raise InvalidRequest(
                    "This sign-in answer belongs to another sign-in option.", reason="oidc.state_store_mismatch"
                )
            if not browser or not self.keys.verify("browser", browser, browser_hmac):
                raise AuthenticationFailed(
                    "This sign-in was started in another browser. Start the sign-in again here.",
                    reason="oidc.browser_mismatch",
                )
            if expires_at <= now:
                raise AuthenticationFailed("The sign-in took too long. Start it again.", reason="oidc.state_expired")
            login = connector.complete(params, data)
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, event="login", store=store, ctx=ctx) from None
        pending = data.get("pending")
        signed_in = self.start_session(
            login.identity,
            ctx,
            previous_session=previous_session,
            detail={"acr": login.acr, "step_up": bool(pending)},
        )
        return OidcSignedIn(signed_in, str(data.get("return_to") or "/"), pending)

    def start_step_up(
        self,
        identity: Identity,
        *,
        role: str,
        action: str,
        duration_seconds: int | None,
        browser: str,
        ctx: Context,
    ) -> str | None:
        """The IdP URL that re-authenticates more strongly, when only MFA strength stands between this identity
        and the role and the identity's IdP is configured to step up; otherwise None (issue decides)."""
        connector = self.oidc_connectors.get(identity.store)
        config = self.settings.role(role)
        if (
            connector is None
            or config is None
            or mfa_shortfall(identity, config, self.clock()) is None
            or not grants(config, identity)
        ):
            return None
        acr_values = connector.step_up_acr_values(config.mfa)
        if not acr_values:
            return None
        pending = {
            "action": action,
            "role": role,
            "duration": duration_seconds,
            "subject": identity.subject,
            "required": config.mfa.label,
            "acr_values": acr_values,
        }
        url = self.begin_oidc_login(identity.store, browser=browser, return_to="/", pending=pending)
        self.audit.record(
            self.db,
            event="step_up",
            outcome="started",
            reason="mfa_step_up",
            identity=identity,
            ctx=ctx,
            detail={"role": role, "required": config.mfa.label, "acr_values": acr_values},
        )
        return url

    def after_oidc_sign_in(self, done: OidcSignedIn, ctx: Context) -> str:
        """Where the browser goes next: back where it was, or on to the console after a step-up."""
        pending, identity = done.pending, done.signed_in.identity
        if not pending or pending.get("subject") != identity.subject:
            return done.return_to
        required = MfaLevel.parse(str(pending["required"]))
        if identity.mfa.level < required:
            label = required.label.replace("_", "-")
            raise self.audit.deny(
                self.db,
                MfaRequired(
                    f"{self.oidc(identity.store).display_name} signed you in again but did not confirm a {label} "
                    f"sign-in, which the role {pending['role']} needs. Set up a stronger factor (for example a "
                    "security key) with your identity provider, or ask your administrator.",
                    reason="oidc.step_up_not_met",
                ),
                event="credentials",
                identity=identity,
                channel=str(pending["action"]),
                ctx=ctx,
                detail={
                    "role": pending["role"],
                    "acr": identity.attributes.get("acr"),
                    "amr": list(identity.mfa.methods),
                },
            )
        if pending["action"] == "console":
            return self.console_url(
                identity,
                role=str(pending["role"]),
                ctx=ctx,
                duration_seconds=pending.get("duration"),
                session_hmac=self.session_hmac(done.signed_in.session_id),
            )
        return "/"

    # ------------------------------------------------------------ roles and issuance

    def provisioned(self, identity: Identity) -> Identity:
        """The identity as provisioning has it now (``broker.issuance.Provisioned``)."""
        return self.issuance.provisioned(identity)

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
        """Credentials for the portal's credentials page (``broker.issuance.Issuance.issue``)."""
        return self.issuance.issue(
            identity, role=role, channel=channel, ctx=ctx, duration_seconds=duration_seconds, session_hmac=session_hmac
        )

    def console_url(
        self,
        identity: Identity,
        *,
        role: str,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> str:
        """A console sign-in link (``broker.issuance.Issuance.console_url``)."""
        return self.issuance.console_url(
            identity, role=role, ctx=ctx, duration_seconds=duration_seconds, session_hmac=session_hmac
        )

    def roles_for(self, identity: Identity) -> list[RoleView]:
        """The portal's roles, each marked when the identity's OIDC provider can be asked for the missing
        strength (a step-up)."""

        def step_up(identity: Identity, role: RoleConfig) -> bool:
            oidc = self.oidc_connectors.get(identity.store)
            return bool(oidc and oidc.step_up_acr_values(role.mfa))

        return self.issuance.roles_for(identity, step_up=step_up)
