"""The SAML response checks the broker owns, on its own hardened parse of the bytes, before python3-saml runs
(see :mod:`broker.connectors.saml` for the list and why). Pure: lxml and the standard library only.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from lxml import etree

from broker.errors import AuthenticationFailed, InvalidRequest, PayloadTooLarge
from broker.identity import MfaEvidence, MfaLevel

# A SAML response with a few hundred groups is tens of kilobytes; anything near these limits is hostile.
# The form body is capped by the ACS route before parsing; the decoded XML here.
MAX_FORM_BYTES = 512 * 1024
MAX_RESPONSE_BYTES = 256 * 1024

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
NS = {"samlp": SAMLP, "saml": SAML, "ds": DS}
BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
ENTITY_FORMAT = "urn:oasis:names:tc:SAML:2.0:nameid-format:entity"
NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
NAMEID_TRANSIENT = "urn:oasis:names:tc:SAML:2.0:nameid-format:transient"
BINDING_POST = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BINDING_REDIRECT = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"

_DOCTYPE = re.compile(rb"<!\s*(DOCTYPE|ENTITY|ELEMENT|ATTLIST)", re.IGNORECASE)
_XML_DECL_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")
_B64 = re.compile(rb"^[A-Za-z0-9+/]*={0,2}$")
_SAML_TIME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]00:00)$")


class SamlRejected(AuthenticationFailed):
    """A SAML response failed a check. ``library_error`` keeps python3-saml's text for the audit detail."""

    def __init__(self, reason: str, message: str | None = None, *, library_error: str | None = None) -> None:
        super().__init__(
            message or "The identity provider's sign-in response was not accepted. Start the sign-in again.",
            reason=reason,
        )
        self.library_error = library_error


@dataclass(frozen=True)
class CheckedResponse:
    """A response whose signature and protocol checks passed. Identity fields are not read yet."""

    response_id: str
    assertion_id: str
    issuer: str
    in_response_to: str | None
    # Until when the assertion could be accepted anywhere: the replay guard keeps its ID that long.
    replay_until: datetime
    mfa: MfaEvidence
    authn_contexts: tuple[str, ...]
    _response: Any = field(repr=False, compare=False)


@dataclass(frozen=True)
class ServiceProvider:
    """What the checks compare a response with: this SP's names, the pinned IdP, the time limits."""

    entity_id: str
    acs_url: str
    idp_entity_id: str
    skew: timedelta
    max_age: timedelta
    level_for: Callable[[tuple[str, ...]], MfaLevel]


def _parse_time(value: str | None, what: str) -> datetime:
    """xs:dateTime in UTC, as SAML core section 1.3.3 requires ("MUST be expressed in UTC")."""
    match = _SAML_TIME.match(value or "")
    if not match:
        raise SamlRejected("saml.malformed", library_error=f"{what} is missing or not a UTC xs:dateTime")
    return datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC)


def _optional_time(value: str | None, what: str) -> datetime | None:
    return None if value is None else _parse_time(value, what)


def _text(element: etree._Element | None) -> str | None:
    return None if element is None or element.text is None else element.text.strip()


def _one_text_node(element: etree._Element) -> bool:
    """True if the element holds only character data: no comments, processing instructions or children."""
    return len(element) == 0


def decode(saml_response: str) -> bytes:
    """The POST binding's base64 form value -> the XML bytes, refusing what no IdP sends (size, encoding,
    DOCTYPE, NUL) before anything parses it."""
    if len(saml_response) > MAX_FORM_BYTES:
        raise PayloadTooLarge("The sign-in response is too large.", reason="saml.too_large")
    compact = re.sub(r"\s", "", saml_response).encode("ascii", "replace")
    if not compact or not _B64.match(compact) or len(compact) % 4:
        raise InvalidRequest("The sign-in response is not valid base64.", reason="saml.malformed")
    # Checked before decoding: base64 expands 3 bytes to 4, so the decoded size is known exactly.
    if len(compact) // 4 * 3 > MAX_RESPONSE_BYTES + 2:
        raise PayloadTooLarge("The sign-in response is too large.", reason="saml.too_large")
    try:
        xml = base64.b64decode(compact, validate=True)
    except binascii.Error:
        raise InvalidRequest("The sign-in response is not valid base64.", reason="saml.malformed") from None
    if not xml.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        # The POST binding is never DEFLATE-compressed (bindings 3.5.4): nothing here is ever inflated.
        raise SamlRejected("saml.malformed", library_error="not an XML document")
    if b"\x00" in xml:
        raise SamlRejected("saml.nul_character", library_error="NUL byte in the response")
    declared = _XML_DECL_ENCODING.match(xml)
    if declared and declared.group(1).lower() not in (b"utf-8", b"utf8"):
        raise SamlRejected("saml.malformed", library_error="only UTF-8 responses are accepted")
    try:
        xml.decode("utf-8")
    except UnicodeDecodeError:
        raise SamlRejected("saml.malformed", library_error="not UTF-8 (or not XML)") from None
    if _DOCTYPE.search(xml):
        raise SamlRejected("saml.doctype", library_error="DOCTYPE or markup declaration in the response")
    return xml


def parse(xml: bytes) -> etree._Element:
    """A hardened parse (no entities, no network, no DTD) of one ``samlp:Response``."""
    parser = etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
    )
    try:
        root = etree.fromstring(xml, parser)
    except etree.XMLSyntaxError as exc:
        raise SamlRejected("saml.malformed", library_error=str(exc)) from None
    if root.getroottree().docinfo.doctype:
        raise SamlRejected("saml.doctype", library_error="DOCTYPE in the response")
    if root.tag != f"{{{SAMLP}}}Response":
        raise SamlRejected("saml.malformed", library_error=f"root element is {root.tag}, not samlp:Response")
    return root


def protocol_checks(root: etree._Element, now: datetime, *, sp: ServiceProvider) -> CheckedResponse:
    """The checks the broker owns (status, one assertion, issuer, destination, audience, bearer confirmation,
    time, NameID, InResponseTo), in that order; the first failure raises :class:`SamlRejected`."""
    skew, max_age = sp.skew, sp.max_age

    # An IdP's refusal (core 3.2.2.2) is reported as such, with its status codes and message.
    status = root.find("samlp:Status/samlp:StatusCode", NS)
    if status is None or status.get("Value") != "urn:oasis:names:tc:SAML:2.0:status:Success":
        second = None if status is None else status.find("samlp:StatusCode", NS)
        message = _text(root.find("samlp:Status/samlp:StatusMessage", NS))
        codes = [c.get("Value") for c in (status, second) if c is not None]
        raise SamlRejected(
            "saml.idp_status",
            "The identity provider did not sign you in"
            + (
                " with the stronger factor this needs."
                if second is not None and "AuthnContext" in str(second.get("Value"))
                else "."
            ),
            library_error=f"status {codes}: {message}",
        )

    # One assertion, directly under the Response, and nothing that looks like another one anywhere.
    assertions = list(root.iter(f"{{{SAML}}}Assertion"))
    if list(root.iter(f"{{{SAML}}}EncryptedAssertion")):
        raise SamlRejected("saml.encrypted_unsupported", library_error="EncryptedAssertion is not supported")
    if len(assertions) != 1 or assertions[0].getparent() is not root:
        raise SamlRejected("saml.assertion_count", library_error=f"{len(assertions)} Assertion elements")
    if len(list(root.iter(f"{{{SAMLP}}}Response"))) != 1:
        raise SamlRejected("saml.assertion_count", library_error="nested Response element")
    assertion = assertions[0]
    response_id, assertion_id = root.get("ID"), assertion.get("ID")
    if not response_id or not assertion_id:
        raise SamlRejected("saml.malformed", library_error="Response or Assertion without ID")

    # Issuer (core 2.2.5, profiles 4.1.4.2): the assertion's is required, the response's optional.
    for element, required in ((root.find("saml:Issuer", NS), False), (assertion.find("saml:Issuer", NS), True)):
        if element is None and not required:
            continue
        fmt = None if element is None else element.get("Format")
        if _text(element) != sp.idp_entity_id or (fmt is not None and fmt != ENTITY_FORMAT):
            raise SamlRejected("saml.issuer_mismatch", library_error=f"issuer {_text(element)!r}")

    # Destination (bindings 3.5.5.2): required of a signed POST message; must be exactly our ACS URL.
    if root.get("Destination") != sp.acs_url:
        raise SamlRejected("saml.destination_mismatch", library_error=f"Destination {root.get('Destination')!r}")

    # Audience (core 2.5.1.4): at least one restriction, and every restriction must name us.
    restrictions = assertion.findall("saml:Conditions/saml:AudienceRestriction", NS)
    if assertion.find("saml:Conditions", NS) is None or not restrictions:
        raise SamlRejected("saml.audience_missing", library_error="no AudienceRestriction")
    for restriction in restrictions:
        audiences = [_text(a) for a in restriction.findall("saml:Audience", NS)]
        if sp.entity_id not in audiences:
            raise SamlRejected("saml.audience_mismatch", library_error=f"audiences {audiences!r}")

    # Bearer subject confirmation (profiles 4.1.4.2): Recipient exactly our ACS URL, NotOnOrAfter present.
    confirmations = [
        sc for sc in assertion.findall("saml:Subject/saml:SubjectConfirmation", NS) if sc.get("Method") == BEARER
    ]
    if len(confirmations) != 1:
        raise SamlRejected("saml.subject_confirmation_invalid", library_error="not exactly one bearer confirmation")
    data = confirmations[0].find("saml:SubjectConfirmationData", NS)
    if data is None or data.get("Recipient") != sp.acs_url:
        recipient = None if data is None else data.get("Recipient")
        raise SamlRejected("saml.recipient_mismatch", library_error=f"Recipient {recipient!r}")

    # Time: Conditions and the confirmation window, with bounded skew; and a maximum age from IssueInstant.
    conditions = assertion.find("saml:Conditions", NS)
    assert conditions is not None
    not_before = _optional_time(conditions.get("NotBefore"), "Conditions NotBefore")
    not_on_or_after = _optional_time(conditions.get("NotOnOrAfter"), "Conditions NotOnOrAfter")
    scd_not_on_or_after = _parse_time(data.get("NotOnOrAfter"), "SubjectConfirmationData NotOnOrAfter")
    scd_not_before = _optional_time(data.get("NotBefore"), "SubjectConfirmationData NotBefore")
    issued = [
        _parse_time(root.get("IssueInstant"), "Response IssueInstant"),
        _parse_time(assertion.get("IssueInstant"), "Assertion IssueInstant"),
    ]
    for start in (not_before, scd_not_before, *issued):
        if start is not None and start > now + skew:
            raise SamlRejected("saml.not_yet_valid", library_error=f"valid from {start.isoformat()}")
    for end in (not_on_or_after, scd_not_on_or_after):
        if end is not None and end <= now - skew:
            raise SamlRejected("saml.expired", library_error=f"valid until {end.isoformat()}")
    oldest = min(issued)
    if oldest + max_age <= now - skew:
        raise SamlRejected("saml.too_old", library_error=f"issued {oldest.isoformat()}, older than {max_age}")

    # Authentication statement (profiles 4.1.4.2): exactly one, with its class and instant.
    statements = assertion.findall("saml:AuthnStatement", NS)
    if len(statements) != 1:
        raise SamlRejected("saml.malformed", library_error="not exactly one AuthnStatement")
    refs = tuple(
        t for t in (_text(e) for e in statements[0].findall("saml:AuthnContext/saml:AuthnContextClassRef", NS)) if t
    )
    authn_instant = _parse_time(statements[0].get("AuthnInstant"), "AuthnInstant")

    # The NameID must be one text node (comment injection), non-empty, and the only one.
    name_ids = assertion.findall("saml:Subject/saml:NameID", NS)
    if len(name_ids) != 1 or not (name_ids[0].text or "").strip():
        raise SamlRejected("saml.nameid_invalid", library_error="not exactly one non-empty NameID")
    if not _one_text_node(name_ids[0]):
        raise SamlRejected("saml.nameid_comment", library_error="comment or markup inside NameID")

    # In-response-to: on the Response (optional) and in the confirmation (required when solicited).
    response_irt, scd_irt = root.get("InResponseTo"), data.get("InResponseTo")
    if response_irt is not None and scd_irt is not None and response_irt != scd_irt:
        raise SamlRejected("saml.in_response_to_mismatch", library_error="Response and assertion disagree")
    if response_irt is not None and scd_irt is None:
        raise SamlRejected("saml.in_response_to_mismatch", library_error="InResponseTo missing in assertion")

    ends = [t for t in (not_on_or_after, scd_not_on_or_after) if t is not None]
    replay_until = max(min([*ends, oldest + max_age]) + skew, now + skew)
    return CheckedResponse(
        response_id=response_id,
        assertion_id=assertion_id,
        issuer=sp.idp_entity_id,
        in_response_to=scd_irt,
        replay_until=replay_until,
        mfa=MfaEvidence(level=sp.level_for(refs), methods=refs, authenticated_at=authn_instant),
        authn_contexts=refs,
        _response=None,
    )
