"""SAML 2.0 Single Logout (profiles section 4.4), service-provider side, HTTP-Redirect binding (bindings 3.4).

Part of the SAML adapter (python3-saml stays inside ``broker.connectors``). Both directions are signed: the
broker signs its LogoutRequest and LogoutResponse with its own key (``sp_private_key``), and accepts only
messages the IdP signed with a pinned certificate, with RSA-SHA256 or stronger. python3-saml checks the
signature over the query string exactly as received, the schema and NotOnOrAfter; where it is lenient this
module is strict first, on its own bounded decode of the same message:

* the DEFLATE-compressed message is inflated with an output cap (no DEFLATE bomb), then parsed without DTDs;
* Issuer is required and exactly the IdP's entity id (the library accepts a message without one);
* Destination is required and exactly this SLO URL (the library accepts none, or a prefix);
* IssueInstant is no older than ``max_assertion_age_seconds`` (plus skew), so an old message cannot be replayed
  later; :mod:`broker.signin.saml` also records every LogoutRequest ID as used.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree
from onelogin.saml2.auth import OneLogin_Saml2_Auth
from onelogin.saml2.constants import OneLogin_Saml2_Constants
from onelogin.saml2.logout_request import OneLogin_Saml2_Logout_Request
from onelogin.saml2.settings import OneLogin_Saml2_Settings

from broker.errors import InvalidRequest, PayloadTooLarge

# A LogoutRequest is well under 2 kB; the query parameter and the inflated XML are capped well above that.
MAX_QUERY_CHARS = 16 * 1024
MAX_MESSAGE_BYTES = 64 * 1024
SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
NS = {"samlp": SAMLP, "saml": SAML}
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
_SAML_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]00:00)$")


class LogoutRejected(InvalidRequest):
    """A logout message failed a check. ``library_error`` keeps the detail for the audit trail."""

    def __init__(self, reason: str, message: str | None = None, *, library_error: str | None = None) -> None:
        super().__init__(
            message or "The identity provider's sign-out message was not accepted.",
            reason=reason,
        )
        self.library_error = library_error


@dataclass(frozen=True)
class SessionRef:
    """What a LogoutRequest must name (core 3.7.1): the NameID as the IdP sent it, and its SessionIndex."""

    name_id: str
    name_id_format: str | None
    name_qualifier: str | None
    sp_name_qualifier: str | None
    session_index: str | None

    def to_json(self) -> dict[str, str | None]:
        return {
            "name_id": self.name_id,
            "format": self.name_id_format,
            "nq": self.name_qualifier,
            "spnq": self.sp_name_qualifier,
            "session_index": self.session_index,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRef:
        return cls(data["name_id"], data.get("format"), data.get("nq"), data.get("spnq"), data.get("session_index"))


@dataclass(frozen=True)
class LogoutRedirect:
    """A signed message to send over HTTP-Redirect: its ID (for InResponseTo) and the URL."""

    message_id: str
    url: str


@dataclass(frozen=True)
class IncomingLogoutRequest:
    """An IdP's LogoutRequest that passed every check, and the signed LogoutResponse that answers it."""

    request_id: str
    name_id: str
    session_indexes: tuple[str, ...]
    not_on_or_after: datetime
    response_url: str


class SamlLogout:
    """Single logout with one IdP. Built by :class:`~broker.connectors.saml.SamlConnector` when configured."""

    def __init__(
        self,
        *,
        sp_entity_id: str,
        sp_slo_url: str,
        sp_private_key: str,
        sp_certificate: str,
        idp_entity_id: str,
        idp_slo_url: str | None,
        certificates: list[str],
        request_data: dict[str, str],
        max_age: timedelta,
        skew: timedelta,
    ) -> None:
        self.sp_slo_url = sp_slo_url
        self.idp_entity_id = idp_entity_id
        self.idp_slo_url = idp_slo_url
        self._request_data = request_data
        self._max_age = max_age
        self._skew = skew
        idp: dict[str, Any] = {
            "entityId": idp_entity_id,
            # Never used for sign-in here; python3-saml requires the key.
            "singleSignOnService": {"url": idp_slo_url or sp_slo_url, "binding": BINDING_REDIRECT},
            "x509cert": certificates[0],
            "x509certMulti": {"signing": certificates},
        }
        if idp_slo_url:
            idp["singleLogoutService"] = {"url": idp_slo_url, "binding": BINDING_REDIRECT}
        self._settings = OneLogin_Saml2_Settings(
            {
                "strict": True,
                "debug": False,
                "sp": {
                    "entityId": sp_entity_id,
                    "assertionConsumerService": {"url": sp_slo_url, "binding": BINDING_REDIRECT},
                    "singleLogoutService": {"url": sp_slo_url, "binding": BINDING_REDIRECT},
                    "x509cert": sp_certificate,
                    "privateKey": sp_private_key,
                },
                "idp": idp,
                "security": {
                    "logoutRequestSigned": True,
                    "logoutResponseSigned": True,
                    "wantMessagesSigned": True,
                    "rejectDeprecatedAlgorithm": True,
                    "signatureAlgorithm": OneLogin_Saml2_Constants.RSA_SHA256,
                    "digestAlgorithm": OneLogin_Saml2_Constants.SHA256,
                },
            }
        )

    @property
    def idp_supports_slo(self) -> bool:
        return self.idp_slo_url is not None

    def _auth(self, query: dict[str, str], raw_query: str) -> Any:
        data = {**self._request_data, "get_data": query, "query_string": raw_query, "validate_signature_from_qs": True}
        return OneLogin_Saml2_Auth(data, self._settings)

    # ------------------------------------------------------------ SP-initiated (profiles 4.4.3.1)

    def request(self, ref: SessionRef, *, relay_state: str) -> LogoutRedirect:
        """A signed LogoutRequest naming the person's NameID and SessionIndex, as a redirect URL to the IdP."""
        auth = self._auth({}, "")
        url = auth.logout(
            return_to=relay_state,
            name_id=ref.name_id,
            session_index=ref.session_index,
            nq=ref.name_qualifier,
            name_id_format=ref.name_id_format,
            spnq=ref.sp_name_qualifier,
        )
        return LogoutRedirect(message_id=str(auth.get_last_request_id()), url=str(url))

    def response_in_response_to(self, query: dict[str, str], *, now: datetime) -> str:
        """The checked LogoutResponse's InResponseTo: which of our requests it answers."""
        root = self._strict(query, "SAMLResponse", "LogoutResponse", now)
        in_response_to = root.get("InResponseTo")
        if not in_response_to:
            raise LogoutRejected("saml.logout_in_response_to_unknown", library_error="no InResponseTo")
        return str(in_response_to)

    def check_response(self, query: dict[str, str], raw_query: str, *, request_id: str, now: datetime) -> None:
        """Signature (pinned certificate), schema, InResponseTo and a Success status, or raise."""
        self._strict(query, "SAMLResponse", "LogoutResponse", now)
        auth = self._auth(query, raw_query)
        auth.process_slo(keep_local_session=True, request_id=request_id)
        self._raise_library_errors(auth, query)

    # ------------------------------------------------------------ IdP-initiated (profiles 4.4.3.2-4)

    def check_request(self, query: dict[str, str], raw_query: str, *, now: datetime) -> IncomingLogoutRequest:
        """Check an IdP's LogoutRequest and build the signed LogoutResponse (Success) that answers it.

        The caller ends the named sessions before sending the browser to ``response_url``.
        """
        root = self._strict(query, "SAMLRequest", "LogoutRequest", now)
        request_id = root.get("ID")
        name_ids = root.findall("saml:NameID", NS)
        if not request_id or len(name_ids) != 1 or len(name_ids[0]) or not (name_ids[0].text or "").strip():
            raise LogoutRejected("saml.logout_malformed", library_error="no ID, or not exactly one plain NameID")
        if self.idp_slo_url is None:
            raise LogoutRejected(
                "saml.logout_unsupported", library_error="no SingleLogoutService is known for this IdP to answer to"
            )
        auth = self._auth(query, raw_query)
        url = auth.process_slo(keep_local_session=True)
        self._raise_library_errors(auth, query)
        issued = _parse_time(root.get("IssueInstant"))
        return IncomingLogoutRequest(
            request_id=request_id,
            name_id=(name_ids[0].text or "").strip(),
            session_indexes=tuple(OneLogin_Saml2_Logout_Request.get_session_indexes(root)),
            not_on_or_after=issued + self._max_age + self._skew,
            response_url=str(url),
        )

    # ------------------------------------------------------------ checks

    def _strict(self, query: dict[str, str], parameter: str, element: str, now: datetime) -> etree._Element:
        """Bounded decode and the checks python3-saml leaves optional; also refuse SHA-1 before the library."""
        encoded = query.get(parameter)
        if not encoded:
            raise LogoutRejected("saml.logout_malformed", library_error=f"no {parameter}")
        if len(encoded) > MAX_QUERY_CHARS:
            raise PayloadTooLarge("The sign-out message is too large.", reason="saml.too_large")
        if "Signature" not in query:
            raise LogoutRejected("saml.logout_unsigned", library_error=f"{element} without Signature")
        if query.get("SigAlg") in OneLogin_Saml2_Constants.DEPRECATED_ALGORITHMS or "SigAlg" not in query:
            raise LogoutRejected("saml.deprecated_algorithm", library_error=f"SigAlg {query.get('SigAlg')!r}")
        try:
            deflated = base64.b64decode(encoded, validate=True)
            inflater = zlib.decompressobj(-15)
            xml = inflater.decompress(deflated, MAX_MESSAGE_BYTES)
            if inflater.unconsumed_tail:
                raise PayloadTooLarge("The sign-out message is too large.", reason="saml.too_large")
        except (binascii.Error, zlib.error):
            raise LogoutRejected("saml.logout_malformed", library_error="not base64 DEFLATE") from None
        parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
        try:
            root = etree.fromstring(xml, parser)
        except etree.XMLSyntaxError as exc:
            raise LogoutRejected("saml.logout_malformed", library_error=str(exc)) from None
        if root.getroottree().docinfo.doctype or root.tag != f"{{{SAMLP}}}{element}":
            raise LogoutRejected("saml.logout_malformed", library_error=f"root element {root.tag}, not {element}")
        issuer = root.find("saml:Issuer", NS)
        if issuer is None or (issuer.text or "").strip() != self.idp_entity_id:
            found = None if issuer is None else issuer.text
            raise LogoutRejected("saml.issuer_mismatch", library_error=f"issuer {found!r}")
        if root.get("Destination") != self.sp_slo_url:
            raise LogoutRejected("saml.destination_mismatch", library_error=f"Destination {root.get('Destination')!r}")
        issued = _parse_time(root.get("IssueInstant"))
        if issued > now + self._skew:
            raise LogoutRejected("saml.not_yet_valid", library_error=f"issued {issued.isoformat()}")
        if issued + self._max_age <= now - self._skew:
            raise LogoutRejected("saml.too_old", library_error=f"issued {issued.isoformat()}")
        return root

    @staticmethod
    def _raise_library_errors(auth: Any, query: dict[str, str]) -> None:
        errors: list[str] = list(auth.get_errors())
        if not errors:
            return
        detail = auth.get_last_error_reason() or ", ".join(errors)
        if any(e.endswith("_signature") for e in errors):
            raise LogoutRejected("saml.signature_invalid", library_error=detail)
        if "logout_not_success" in errors:
            raise LogoutRejected(
                "saml.logout_not_success",
                "Your broker session has ended, but the identity provider did not confirm that it signed you out "
                "there. Close the browser to end that sign-in too.",
                library_error=detail,
            )
        raise LogoutRejected("saml.logout_invalid", library_error=detail)


def _parse_time(value: str | None) -> datetime:
    """xs:dateTime in UTC (core 1.3.3), fractions ignored."""
    match = _SAML_TIME.match(value or "")
    if not match:
        raise LogoutRejected("saml.logout_malformed", library_error="IssueInstant missing or not UTC xs:dateTime")
    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)
