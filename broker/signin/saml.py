"""The SAML sign-in use cases, top to bottom: start (remember the AuthnRequest), finish (check, refuse a
replay, bind to the browser that started it, then read the identity and start a session), and single logout
in both directions (profiles 4.4): the broker's own LogoutRequest when the person signs out, and the IdP's
LogoutRequest, which ends the broker sessions it names.

Every refusal is audited once, with its reason and python3-saml's error text in the detail, before it is
raised. The order in :meth:`SamlSignIn.finish` matters: nothing about the person is read until the response
passed every check, the assertion ID was recorded as used, and the response was matched to a request this
browser started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlencode

from broker.audit import AuditTrail
from broker.connectors.registry import Connectors
from broker.connectors.saml import SamlConnector
from broker.connectors.saml_logout import LogoutRejected, SessionRef
from broker.connectors.saml_response import SamlRejected
from broker.context import Clock, Context
from broker.errors import AccessDenied, BrokerError, MfaRequired, NotFound
from broker.identity import Identity, MfaLevel
from broker.keys import Keys
from broker.logs import get_logger
from broker.policy import visible_roles
from broker.settings import RoleConfig
from broker.signin.sessions import MAX_SESSION_ID_CHARS, Sessions, SignedIn
from broker.store import queries
from broker.store.db import Database
from broker.store.models import LoginRequest

log = get_logger("broker.saml")

# How long a started sign-in may take at the IdP (typing a password, finding the security key).
LOGIN_REQUEST_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class SamlFinished:
    signed_in: SignedIn
    # Unchecked: the web layer passes it through its return-path allow-list.
    next_path: str
    # Configured attribute names the IdP did not send, and the names it did send: shown to the person when
    # that leaves them without any role (the usual sign of attribute names that match nothing).
    attributes_absent: tuple[str, ...] = ()
    attributes_present: tuple[str, ...] = ()


class SamlSignIn:
    """SP-initiated (and, where enabled, IdP-initiated) SAML sign-in, and single logout."""

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
    ) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.clock = clock
        self.sessions = sessions
        self.connectors = connectors
        self.roles = roles

    def connector(self, store: str) -> SamlConnector:
        return self.connectors.saml_store(store)

    def start(
        self,
        store: str,
        *,
        binding: str,
        next_path: str,
        level: MfaLevel = MfaLevel.NONE,
        login_hint: str | None = None,
    ) -> str:
        """Create an AuthnRequest, remember its ID bound to this browser, and return the IdP URL to go to.

        ``binding`` is the browser's SAML binding cookie value; only its HMAC is stored. ``login_hint`` is the
        address home realm discovery was given (sent only to IdPs configured with ``subject_hint``).
        """
        redirect = self.connector(store).authn_request(level=level, login_hint=login_hint)
        now = self.clock()
        with self.db.transaction() as session:
            queries.save_login_request(
                session,
                state_hmac=self.keys.mac("saml-request", f"{store}\n{redirect.request_id}"),
                store=store,
                browser_hmac=self.keys.mac("saml-binding", binding),
                data={"next": next_path, "level": level.label},
                now=now,
                expires_at=now + LOGIN_REQUEST_TTL,
            )
        return redirect.url

    def finish(
        self,
        store: str,
        saml_response: str,
        *,
        binding: str | None,
        relay_state: str | None,
        previous_session: str | None,
        ctx: Context,
    ) -> SamlFinished:
        """Consume a POST-binding response; return the new session and where to go, or raise (audited)."""
        connector = self.connector(store)
        audit = {"event": "login", "store": store, "ctx": ctx}
        now = self.clock()
        try:
            checked = connector.check(saml_response, now=now)
        except BrokerError as exc:
            refused = {"idp": connector.idp_entity_id, "saml_error": getattr(exc, "library_error", None)}
            raise self.audit.deny(self.db, exc, **audit, detail=refused) from None
        detail: dict[str, object] = {
            "idp": checked.issuer,
            "assertion_id": checked.assertion_id,  # stored as a keyed HMAC (audit._SECRET_WORDS)
            "authn_context": list(checked.authn_contexts),
        }
        try:
            # One transaction spends the assertion ID (refused until it would have expired anyway, by every
            # broker process sharing this database) and takes the sign-in it answers; both stay spent even
            # when a check below refuses the response.
            with self.db.transaction() as session:
                queries.consume_once(
                    session,
                    kind="saml_assertion",
                    key_hmac=self.keys.macs("saml-assertion", f"{checked.issuer}\n{checked.assertion_id}"),
                    expires_at=checked.replay_until,
                    savepoint=False,  # a replay abandons the transaction before anything else is in it
                )
                started = (
                    queries.take_login_request(
                        session,
                        state_hmac=self.keys.mac("saml-request", f"{connector.name}\n{checked.in_response_to}"),
                    )
                    if checked.in_response_to is not None
                    else None
                )
            next_path, requested = self._bind(connector, checked.in_response_to, started, binding, relay_state)
            if checked.mfa.level < requested:
                raise MfaRequired(
                    f"The identity provider did not confirm the {requested.label.replace('_', '-')} sign-in "
                    "this needs. Sign in again with a stronger factor.",
                    reason="saml.mfa_downgrade",
                )
            identity = connector.identity(checked)
        except BrokerError as exc:
            detail["saml_error"] = getattr(exc, "library_error", None)
            raise self.audit.deny(self.db, exc, **audit, detail=detail) from None
        absent, present = connector.attribute_report(checked)
        if absent:
            # Signed in, but without what the store maps (often urn:oid: names against short ones): say so.
            detail["attributes_absent"], detail["attributes_present"] = absent, present
            log.warning(
                "saml attributes absent", store=store, principal=identity.principal, absent=absent, present=present
            )
        signed_in = self.sessions.start(
            identity, ctx, previous_session=previous_session, detail={**detail, "protocol": "saml"}
        )
        if connector.logout is not None:
            self._remember_for_logout(connector, signed_in.session_id, connector.session_ref(checked))
        if not absent or self._has_roles(identity):
            return SamlFinished(signed_in, next_path)
        return SamlFinished(signed_in, next_path, tuple(absent), tuple(present))

    def _has_roles(self, identity: Identity) -> bool:
        try:
            return bool(visible_roles(self.sessions.provisioned(identity), self.roles))
        except AccessDenied:
            return False

    def _remember_for_logout(self, connector: SamlConnector, session_id: str, ref: SessionRef) -> None:
        now = self.clock()
        with self.db.transaction() as session:
            queries.save_saml_session(
                session,
                session_hmac=self.sessions.hmac(session_id),
                store=connector.name,
                name_id_hmac=self.keys.mac("saml-nameid", f"{connector.name}\n{ref.name_id}"),
                logout=ref.to_json(),
                now=now,
                expires_at=now + timedelta(hours=self.sessions.settings.absolute_timeout_hours),
            )

    def _bind(
        self,
        connector: SamlConnector,
        in_response_to: str | None,
        row: LoginRequest | None,
        binding: str | None,
        relay_state: str | None,
    ) -> tuple[str, MfaLevel]:
        """Match the response to a request this browser started (or allow an unsolicited one if configured).

        ``row`` is the sign-in in flight that ``in_response_to`` named, already taken (deleted) by the caller.
        """
        if in_response_to is None:
            if not connector.allow_idp_initiated:
                raise SamlRejected(
                    "saml.unsolicited",
                    "Sign-in must start at this broker. Start the sign-in again from the sign-in page.",
                    library_error="no InResponseTo and IdP-initiated sign-in is disabled",
                )
            return relay_state or "/", MfaLevel.NONE
        if row is None or row.store != connector.name:
            raise SamlRejected(
                "saml.in_response_to_unknown", library_error="InResponseTo names no sign-in in flight here"
            )
        if row.expires_at <= self.clock():
            raise SamlRejected("saml.request_expired", "The sign-in took too long. Start it again.")
        if not binding or not self.keys.verify("saml-binding", binding, row.browser_hmac):
            raise SamlRejected(
                "saml.browser_mismatch",
                "This sign-in was started in another browser. Start it again here.",
                library_error="the response's request was started by another browser",
            )
        return str(row.data.get("next") or "/"), MfaLevel.parse(str(row.data.get("level") or "none"))

    def refuse(self, store: str, error: BrokerError, ctx: Context, *, event: str = "login") -> BrokerError:
        """Audit a refusal made at the edge (oversized or malformed message) and return it to raise."""
        connector = self.connector(store)
        detail = {"idp": connector.idp_entity_id, "saml_error": getattr(error, "library_error", None)}
        return self.audit.deny(self.db, error, event=event, store=store, ctx=ctx, detail=detail)

    # ------------------------------------------------------------ single logout (profiles 4.4)

    def sign_out(self, session_id: str | None, ctx: Context) -> str | None:
        """End a SAML sign-in's broker session; return where the browser goes next, or None if the session is
        not a SAML one (the caller signs it out as usual).

        With single logout, that is the IdP with a signed LogoutRequest (its ID remembered for the answer);
        without, the signed-out page, told that the IdP's own session is still alive.
        """
        if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
            return None
        id_hmac = self.sessions.hmac(session_id)
        with self.db.transaction() as session:
            row = queries.get_session(session, id_hmac=id_hmac)
            store = None if row is None else Identity.from_json(row.identity).store
            saml_row = queries.take_saml_session(session, session_hmac=id_hmac)
        connector = self.connectors.saml.get(store or "")
        if connector is None:
            return None
        self.sessions.end(session_id, ctx)
        logout = connector.logout
        if logout is None or not logout.idp_supports_slo or saml_row is None:
            return "/signed-out?" + urlencode({"store": connector.name, "idp_session": "kept"})
        redirect = logout.request(SessionRef.from_json(saml_row.logout), relay_state="/signed-out")
        now = self.clock()
        with self.db.transaction() as session:
            queries.save_login_request(
                session,
                state_hmac=self.keys.mac("saml-logout", f"{connector.name}\n{redirect.message_id}"),
                store=connector.name,
                # Not bound to a browser: the session it concerns has already ended, so the answer can only
                # confirm the IdP's side (and is checked for signature, issuer and InResponseTo).
                browser_hmac=self.keys.mac("saml-logout", "-"),
                data={"kind": "logout"},
                now=now,
                expires_at=now + LOGIN_REQUEST_TTL,
            )
        return redirect.url

    def single_logout(self, store: str, query: dict[str, str], raw_query: str, ctx: Context) -> str:
        """The SingleLogoutService endpoint (HTTP-Redirect): an IdP's LogoutRequest or its LogoutResponse.

        Returns where the browser goes next: the IdP with a signed LogoutResponse, or the signed-out page.
        Every refusal is audited once.
        """
        connector = self.connector(store)
        audit = {"event": "logout", "store": store, "ctx": ctx}
        try:
            logout = connector.logout
            if logout is None:
                raise NotFound("Single logout is not configured for this sign-in option.", reason="saml.slo_disabled")
            now = self.clock()
            if "SAMLRequest" in query and "SAMLResponse" not in query:
                incoming = logout.check_request(query, raw_query, now=now)
                with self.db.transaction() as session:
                    queries.consume_once(
                        session,
                        kind="saml_logout",
                        key_hmac=self.keys.macs("saml-logout-request", f"{store}\n{incoming.request_id}"),
                        expires_at=incoming.not_on_or_after,
                    )
                    ended = queries.end_saml_sessions(
                        session,
                        store=store,
                        name_id_hmac=self.keys.mac("saml-nameid", f"{store}\n{incoming.name_id}"),
                        session_indexes=incoming.session_indexes,
                    )
                    for identity in ended:
                        self.audit.append(
                            session,
                            event="logout",
                            outcome="ok",
                            reason="idp_logout",
                            identity=Identity.from_json(identity),
                            ctx=ctx,
                            detail={"idp": connector.idp_entity_id, "protocol": "saml"},
                        )
                return incoming.response_url
            if "SAMLResponse" in query and "SAMLRequest" not in query:
                in_response_to = logout.response_in_response_to(query, now=now)
                with self.db.transaction() as session:
                    row = queries.take_login_request(
                        session, state_hmac=self.keys.mac("saml-logout", f"{store}\n{in_response_to}")
                    )
                if row is None or row.store != store or row.expires_at <= now:
                    raise LogoutRejected(
                        "saml.logout_in_response_to_unknown",
                        library_error="InResponseTo names no sign-out in flight here",
                    )
                logout.check_response(query, raw_query, request_id=in_response_to, now=now)
                return "/signed-out?" + urlencode({"store": store, "idp_session": "ended"})
            raise LogoutRejected("saml.logout_malformed", library_error="not exactly one of SAMLRequest, SAMLResponse")
        except BrokerError as exc:
            detail = {"idp": connector.idp_entity_id, "saml_error": getattr(exc, "library_error", None)}
            raise self.audit.deny(self.db, exc, **audit, detail=detail) from None
