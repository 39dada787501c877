"""The SAML sign-in use cases, top to bottom: start (remember the AuthnRequest), finish (check, refuse a
replay, bind to the browser that started it, then read the identity and start a session).

Every refusal is audited once, with its reason and python3-saml's error text in the detail, before it is
raised. The order in :meth:`SamlSignIn.finish` matters: nothing about the person is read until the response
passed every check, the assertion ID was recorded as used, and the response was matched to a request this
browser started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from broker.audit import Context
from broker.connectors.saml import SamlConnector, SamlRejected
from broker.errors import BrokerError, MfaRequired, NotFound
from broker.federation import Broker, SignedIn
from broker.identity import MfaLevel
from broker.store import queries
from broker.store.models import LoginRequest

# How long a started sign-in may take at the IdP (typing a password, finding the security key).
LOGIN_REQUEST_TTL = timedelta(minutes=10)


@dataclass(frozen=True)
class SamlFinished:
    signed_in: SignedIn
    # Unchecked: the web layer passes it through its return-path allow-list.
    next_path: str


class SamlSignIn:
    """SP-initiated (and, where enabled, IdP-initiated) SAML sign-in on top of the broker's use cases."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def connector(self, store: str) -> SamlConnector:
        connector = self.broker.saml_connectors.get(store)
        if connector is None:
            raise NotFound("There is no such SAML sign-in option.")
        return connector

    def start(self, store: str, *, binding: str, next_path: str, level: MfaLevel = MfaLevel.NONE) -> str:
        """Create an AuthnRequest, remember its ID bound to this browser, and return the IdP URL to go to.

        ``binding`` is the browser's SAML binding cookie value; only its HMAC is stored.
        """
        broker = self.broker
        redirect = self.connector(store).authn_request(level=level)
        now = broker.clock()
        with broker.db.transaction() as session:
            queries.save_login_request(
                session,
                state_hmac=broker.keys.mac("saml-request", f"{store}\n{redirect.request_id}"),
                store=store,
                browser_hmac=broker.keys.mac("saml-binding", binding),
                data={"next": next_path, "level": level.label},
                now=now,
                expires_at=now + LOGIN_REQUEST_TTL,
            )
        return redirect.url

    def finish(
        self, store: str, saml_response: str, *, binding: str | None, relay_state: str | None, ctx: Context
    ) -> SamlFinished:
        """Consume a POST-binding response; return the new session and where to go, or raise (audited)."""
        broker = self.broker
        connector = self.connector(store)
        audit = {"event": "login", "store": store, "ctx": ctx}
        now = broker.clock()
        try:
            checked = connector.check(saml_response, now=now)
        except BrokerError as exc:
            refused = {"idp": connector.idp_entity_id, "saml_error": getattr(exc, "library_error", None)}
            raise broker.audit.deny(broker.db, exc, **audit, detail=refused) from None
        detail: dict[str, object] = {
            "idp": checked.issuer,
            "assertion_id": checked.assertion_id,  # stored as a keyed HMAC (audit._SECRET_WORDS)
            "authn_context": list(checked.authn_contexts),
        }
        try:
            # One transaction spends the assertion ID (refused until it would have expired anyway, by every
            # broker process sharing this database) and takes the sign-in it answers; both stay spent even
            # when a check below refuses the response.
            with broker.db.transaction() as session:
                queries.consume_once(
                    session,
                    kind="saml_assertion",
                    key_hmac=broker.keys.mac("saml-assertion", f"{checked.issuer}\n{checked.assertion_id}"),
                    expires_at=checked.replay_until,
                    savepoint=False,  # a replay abandons the transaction before anything else is in it
                )
                started = (
                    queries.take_login_request(
                        session,
                        state_hmac=broker.keys.mac("saml-request", f"{connector.name}\n{checked.in_response_to}"),
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
            raise broker.audit.deny(broker.db, exc, **audit, detail=detail) from None
        signed_in = broker.start_session(identity, ctx, detail={**detail, "protocol": "saml"})
        return SamlFinished(signed_in, next_path)

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
        broker = self.broker
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
        if row.expires_at <= broker.clock():
            raise SamlRejected("saml.request_expired", "The sign-in took too long. Start it again.")
        if not binding or not broker.keys.verify("saml-binding", binding, row.browser_hmac):
            raise SamlRejected(
                "saml.browser_mismatch",
                "This sign-in was started in another browser. Start it again here.",
                library_error="the response's request was started by another browser",
            )
        return str(row.data.get("next") or "/"), MfaLevel.parse(str(row.data.get("level") or "none"))

    def refuse(self, store: str, error: BrokerError, ctx: Context) -> BrokerError:
        """Audit a refusal made at the edge (oversized or malformed POST) and return it to raise."""
        connector = self.connector(store)
        detail = {"idp": connector.idp_entity_id, "saml_error": getattr(error, "library_error", None)}
        return self.broker.audit.deny(self.broker.db, error, event="login", store=store, ctx=ctx, detail=detail)
