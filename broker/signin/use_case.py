"""``SignIn``: the browser sign-in use case for break-glass accounts, directories (LDAP), OpenID Connect and
SAML, and the OIDC step-up that re-authenticates more strongly before a role is used.

Every flow: authenticate through the connector (audited refusal on failure) -> check what the sign-in was
started for -> :meth:`Sessions.start` (provisioning and disabled checks, the previous session ended, the new
one created and audited in one transaction) -> the pending step-up's action, if any. Web handlers parse the
request, call one method here and render what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol
from urllib.parse import urlencode

from broker.audit import AuditTrail
from broker.connectors.base import PasswordConnector
from broker.connectors.oidc import LOGIN_REQUEST_TTL_SECONDS
from broker.connectors.registry import Connectors
from broker.context import Clock, Context
from broker.discovery import Discovery, domain_of
from broker.errors import AuthenticationFailed, BrokerError, InvalidRequest, MfaRequired, ReplayDetected
from broker.identity import Identity
from broker.keys import Keys
from broker.policy import grants, mfa_shortfall
from broker.ratelimit import RateLimiter
from broker.settings import RoleConfig
from broker.signin.saml import SamlSignIn
from broker.signin.sessions import Sessions, SignedIn
from broker.signin.step_up import PendingStepUp
from broker.store import queries
from broker.store.db import Database

# The callback carries code, state, iss (RFC 9207) or error, error_description, error_uri; a few hundred
# bytes each in practice. Anything much larger is refused before it reaches the database or the IdP.
MAX_PARAM_CHARS = 4096
MAX_STATE_CHARS = 256


class ConsoleIssuer(Protocol):
    """Issues console credentials and returns the AWS sign-in URL (``Broker.console_url``)."""

    def __call__(
        self,
        identity: Identity,
        *,
        role: str,
        ctx: Context,
        duration_seconds: int | None = None,
        session_hmac: str | None = None,
    ) -> str: ...


@dataclass(frozen=True)
class OidcSignedIn:
    """A completed OIDC sign-in and what the browser asked for before it (a step-up's pending action)."""

    signed_in: SignedIn
    return_to: str
    pending: PendingStepUp | None


class SignIn:
    """One sign-in use case for every identity store. Built once per process with its dependencies."""

    def __init__(
        self,
        *,
        db: Database,
        audit: AuditTrail,
        keys: Keys,
        clock: Clock,
        sessions: Sessions,
        connectors: Connectors,
        roles: Sequence[RoleConfig],
        discovery: Discovery,
        limiter: RateLimiter | None,
        console: ConsoleIssuer,
    ) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.clock = clock
        self.sessions = sessions
        self.connectors = connectors
        self.roles = roles
        self.discovery = discovery
        self.limiter = limiter
        self.console = console
        self.saml = SamlSignIn(
            db=db, audit=audit, keys=keys, clock=clock, sessions=sessions, connectors=connectors, roles=roles
        )

    # ------------------------------------------------------------ home realm discovery

    def discover(self, address: str, *, next_path: str, ctx: Context) -> str:
        """Where an address signs in: its store's start address with ``next`` and ``login_hint`` (OIDC
        ``login_hint``, SAML Subject hint, or the directory form's username). A refusal (no address, or a
        domain no store owns) is audited with the domain only: the typed address is unverified."""
        try:
            realm = self.discovery.realm(address)
        except BrokerError as exc:
            try:
                domain: str | None = domain_of(address)
            except BrokerError:
                domain = None
            raise self.audit.deny(self.db, exc, event="login.discovery", ctx=ctx, detail={"domain": domain}) from None
        connector = self.connectors.by_name[realm.store]
        query = urlencode({"next": next_path, "login_hint": address.strip()})
        return f"{self.connectors.start_path(connector)}?{query}"

    # ------------------------------------------------------------ password (break-glass, directory)

    def local(
        self, store: str, username: str, password: str, totp: str, ctx: Context, *, previous_session: str | None
    ) -> SignedIn:
        """Break-glass sign-in: password and TOTP code, the code's time step spent once."""
        connector = self.connectors.local_store(store)
        return self._password(connector, username, password, totp, ctx, previous_session=previous_session)

    def ldap(self, store: str, username: str, password: str, ctx: Context, *, previous_session: str | None) -> SignedIn:
        """Password sign-in against a directory; its session's MFA level is ``none``."""
        connector = self.connectors.ldap_store(store)
        return self._password(connector, username, password, "", ctx, previous_session=previous_session)

    def _password(
        self,
        connector: PasswordConnector,
        username: str,
        password: str,
        otp: str,
        ctx: Context,
        *,
        previous_session: str | None,
    ) -> SignedIn:
        store, principal = connector.name, connector.audit_principal(username)
        # Per account as well as per address (the route's limit): guessing spread over many addresses stops.
        if self.limiter is not None:
            key = f"{store}:{connector.account_key(username)}"
            self.limiter.hit("login", per="principal", key=key, ctx=ctx, principal=principal, store=store)
        # 1. authenticate
        try:
            login = connector.login(username, password, otp, now=self.clock().timestamp())
        except BrokerError as exc:
            detail = {**connector.audit_detail, **getattr(exc, "detail", {})}
            raise self.audit.deny(
                self.db, exc, event="login", principal=principal, store=store, ctx=ctx, detail=detail
            ) from None
        # 2. spend the one-time value (a TOTP step works once: RFC 6238 section 5.2)
        if login.one_time is not None:
            once = login.one_time
            try:
                with self.db.transaction() as session:
                    queries.consume_once(
                        session,
                        kind=once.kind,
                        key_hmac=self.keys.macs(once.kind, once.key),
                        expires_at=self.clock() + timedelta(seconds=once.ttl_seconds),
                        message=once.message,
                    )
            except BrokerError as exc:
                raise self.audit.deny(
                    self.db, exc, event="login", identity=login.identity, ctx=ctx, detail=dict(connector.audit_detail)
                ) from None
        # 3. the session, and its audit event
        detail = dict(connector.audit_detail)
        return self.sessions.start(login.identity, ctx, previous_session=previous_session, detail=detail)

    # ------------------------------------------------------------ OpenID Connect: redirect, callback

    def begin_oidc(
        self,
        store: str,
        *,
        browser: str,
        return_to: str,
        pending: PendingStepUp | None = None,
        login_hint: str | None = None,
    ) -> str:
        """Start an authorization request; state, nonce and PKCE verifier stay server-side, bound to the browser.

        A pending step-up asks for its ``acr_values`` with ``max_age=0`` so the IdP must authenticate afresh
        (OpenID Connect Core 1.0 section 3.1.2.1) rather than reuse its single sign-on session.
        """
        connector = self.connectors.oidc_store(store)
        request = connector.authorization_request(
            acr_values=list(pending.acr_values) if pending else [],
            max_age=0 if pending else None,
            login_hint=login_hint,
        )
        now = self.clock()
        with self.db.transaction() as session:
            queries.save_login_request(
                session,
                state_hmac=self.keys.mac("oidc-state", request.state),
                store=store,
                browser_hmac=self.keys.mac("browser", browser),
                data={**request.stored(), "return_to": return_to, "pending": pending.to_json() if pending else None},
                now=now,
                expires_at=now + timedelta(seconds=LOGIN_REQUEST_TTL_SECONDS),
            )
        return request.url

    def finish_oidc(
        self,
        store: str,
        items: Sequence[tuple[str, str]],
        *,
        browser: str | None,
        previous_session: str | None,
        ctx: Context,
    ) -> OidcSignedIn:
        """Check the callback's parameters, match it to its request (once, same browser, same store), verify
        it through the connector, start a new session."""
        try:
            # RFC 6749 section 3.1: request and response parameters MUST NOT be included more than once.
            names = [name for name, _ in items]
            if len(names) != len(set(names)) or any(len(value) > MAX_PARAM_CHARS for _, value in items):
                raise InvalidRequest(
                    "The sign-in answer is malformed. Start the sign-in again.", reason="oidc.params_invalid"
                )
            params = dict(items)
            connector = self.connectors.oidc_store(store)
            state = params.get("state")
            if not state or len(state) > MAX_STATE_CHARS:
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
        pending = PendingStepUp.from_json(data.get("pending"))
        signed_in = self.sessions.start(
            login.identity,
            ctx,
            previous_session=previous_session,
            detail={"acr": login.acr, "step_up": pending is not None},
        )
        return OidcSignedIn(signed_in, str(data.get("return_to") or "/"), pending)

    # ------------------------------------------------------------ step-up (OIDC)

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
        and the role and the identity's IdP is configured to step up; otherwise None (issuance decides)."""
        connector = self.connectors.oidc.get(identity.store)
        config = next((r for r in self.roles if r.name == role), None)
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
        pending = PendingStepUp(
            action=action,
            role=role,
            duration_seconds=duration_seconds,
            subject=identity.subject,
            required=config.mfa,
            acr_values=tuple(acr_values),
        )
        url = self.begin_oidc(identity.store, browser=browser, return_to="/", pending=pending)
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

    def after_oidc(self, done: OidcSignedIn, ctx: Context) -> str:
        """Where the browser goes next: back where it was, or on to the console after a step-up (refused,
        and audited, when the IdP did not confirm the strength the role needs; the new session stays)."""
        pending, identity = done.pending, done.signed_in.identity
        if pending is None or pending.subject != identity.subject:
            return done.return_to
        if identity.mfa.level < pending.required:
            label = pending.required.label.replace("_", "-")
            raise self.audit.deny(
                self.db,
                MfaRequired(
                    f"{self.connectors.oidc_store(identity.store).display_name} signed you in again but did not "
                    f"confirm a {label} sign-in, which the role {pending.role} needs. Set up a stronger factor "
                    "(for example a security key) with your identity provider, or ask your administrator.",
                    reason="oidc.step_up_not_met",
                ),
                event="credentials",
                identity=identity,
                channel=pending.action,
                ctx=ctx,
                detail={"role": pending.role, "acr": identity.attributes.get("acr"), "amr": list(identity.mfa.methods)},
            )
        if pending.action == "console":
            return self.console(
                identity,
                role=pending.role,
                ctx=ctx,
                duration_seconds=pending.duration_seconds,
                session_hmac=self.sessions.hmac(done.signed_in.session_id),
            )
        return "/"

    # ------------------------------------------------------------ sign-out

    def sign_out(self, session_id: str | None, ctx: Context) -> str:
        """End the session; where the browser goes next: a SAML IdP's single logout (or the signed-out page
        saying the IdP session lives on), an OIDC IdP's logout, or the signed-out page."""
        saml_exit = self.saml.sign_out(session_id, ctx)
        if saml_exit is not None:
            return saml_exit
        identity = self.sessions.end(session_id, ctx)
        oidc = self.connectors.oidc.get(identity.store) if identity is not None else None
        return (oidc.end_session_url() if oidc else None) or "/signed-out"
