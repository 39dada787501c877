"""Prove the real SAML IdP test peer and the hostile-response helpers behave as the broker's tests assume.

python3-saml (OneLogin) plays the service provider, in strict mode with the IdP
certificate pinned -- no broker code is involved. The mutation checks are spot
checks that each helper changes the document in the intended way; the broker's
own security suite is what asserts the broker rejects them.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import httpx
import pytest
from cryptography import x509
from lxml import etree
from onelogin.saml2.authn_request import OneLogin_Saml2_Authn_Request
from onelogin.saml2.errors import OneLogin_Saml2_ValidationError
from onelogin.saml2.idp_metadata_parser import OneLogin_Saml2_IdPMetadataParser
from onelogin.saml2.response import OneLogin_Saml2_Response
from onelogin.saml2.settings import OneLogin_Saml2_Settings
from onelogin.saml2.utils import OneLogin_Saml2_Utils
from onelogin.saml2.xmlparser import DTDForbidden, EntitiesForbidden

from tests.support import saml_mutations as mut
from tests.support.saml_idp import (
    AC_MFA,
    AC_PASSWORD_PROTECTED_TRANSPORT,
    DIGEST_SHA1,
    SIG_RSA_SHA1,
    SamlIdp,
    SamlIdpServer,
    make_keypair,
    xmlsec1_verify,
)

SP_ENTITY_ID = "https://broker.test/saml/metadata"
SP_ACS_URL = "https://broker.test/saml/acs"
REQUEST_ID = "_req-0123456789abcdef"
NS = mut.NS


# ----------------------------------------------------------------- helpers


def onelogin_settings(
    idp_entity_id: str,
    idp_sso_url: str,
    idp_cert_b64: str,
    *,
    want_assertions_signed: bool = True,
    want_messages_signed: bool = False,
    requested_authn_context: list[str] | bool = False,
) -> OneLogin_Saml2_Settings:
    """Minimal strict python3-saml SP settings with the IdP certificate pinned."""
    return OneLogin_Saml2_Settings(
        {
            "strict": True,
            "debug": False,
            "sp": {
                "entityId": SP_ENTITY_ID,
                "assertionConsumerService": {
                    "url": SP_ACS_URL,
                    "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST",
                },
                "NameIDFormat": "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
            },
            "idp": {
                "entityId": idp_entity_id,
                "singleSignOnService": {
                    "url": idp_sso_url,
                    "binding": "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect",
                },
                "x509cert": idp_cert_b64,
            },
            "security": {
                "wantAssertionsSigned": want_assertions_signed,
                "wantMessagesSigned": want_messages_signed,
                "rejectDeprecatedAlgorithm": True,
                "wantNameId": True,
                "wantAttributeStatement": False,
                "requestedAuthnContext": requested_authn_context,
                "requestedAuthnContextComparison": "exact",
            },
        },
        sp_validation_only=True,
    )


def sp_validate(
    idp: SamlIdp,
    xml: str,
    *,
    request_id: str | None = REQUEST_ID,
    raise_exceptions: bool = False,
    **settings_kw: Any,
) -> OneLogin_Saml2_Response:
    """Run python3-saml's strict validation of ``xml`` as posted to SP_ACS_URL."""
    settings = onelogin_settings(idp.entity_id, idp.sso_url, idp.cert_base64, **settings_kw)
    b64 = base64.b64encode(xml.encode("utf-8")).decode("ascii")
    response = OneLogin_Saml2_Response(settings, b64)
    request_data = {
        "https": "on",
        "http_host": "broker.test",
        "server_port": "443",
        "script_name": "/saml/acs",
        "post_data": {"SAMLResponse": b64},
    }
    response.valid = response.is_valid(request_data, request_id=request_id, raise_exceptions=raise_exceptions)
    return response


_VALIDATION_CODES = {
    value: name
    for name, value in vars(OneLogin_Saml2_ValidationError).items()
    if name.isupper() and isinstance(value, int)
}


def accepted(idp: SamlIdp, xml: str, **kw: Any) -> bool:
    """python3-saml's strict validation accepts ``xml`` (any refusal makes the calling test fail)."""
    return bool(sp_validate(idp, xml, raise_exceptions=True, **kw).valid)


def refusal(idp: SamlIdp, xml: str, **kw: Any) -> str:
    """Why python3-saml's strict validation refuses ``xml``: the name of its validation error code (e.g.
    ``WRONG_AUDIENCE``), or the parser's exception name (``DTDForbidden``, ``EntitiesForbidden``,
    ``XMLSyntaxError``) for a document refused before validation. Accepting it fails the test,
    and so does any other exception (a crash is not a refusal)."""
    try:
        sp_validate(idp, xml, raise_exceptions=True, **kw)
    except OneLogin_Saml2_ValidationError as exc:
        return _VALIDATION_CODES[exc.code]
    except (DTDForbidden, EntitiesForbidden, etree.XMLSyntaxError) as exc:
        return type(exc).__name__
    raise AssertionError("python3-saml accepted the response")


def parse(xml: str) -> etree._Element:
    return etree.fromstring(xml.encode(), etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=True))


def ref_uri(signature: etree._Element) -> str:
    return str(signature.find("ds:SignedInfo/ds:Reference", NS).get("URI"))


def c14n(elem: etree._Element) -> bytes:
    return etree.tostring(elem, method="c14n", exclusive=True, with_comments=False)


class FormParser(HTMLParser):
    """Collect forms (action, method, inputs), labels and buttons of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.labels: dict[str, str] = {}
        self.buttons: list[str] = []
        self._label_for: str | None = None
        self._in_button = False
        self.has_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a.get("action", ""), "method": a.get("method", ""), "inputs": {}})
        elif tag == "input" and self.forms:
            self.forms[-1]["inputs"][a.get("name", "")] = {"type": a.get("type", ""), "value": a.get("value", "")}
        elif tag == "label":
            self._label_for = a.get("for")
        elif tag == "button":
            self._in_button = True
        elif tag == "script":
            self.has_script = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_for = None
        elif tag == "button":
            self._in_button = False

    def handle_data(self, data: str) -> None:
        if self._label_for and data.strip():
            self.labels[self._label_for] = data.strip()
        if self._in_button and data.strip():
            self.buttons.append(data.strip())


def parse_page(html_text: str) -> FormParser:
    parser = FormParser()
    parser.feed(html_text)
    return parser


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idp() -> Iterator[SamlIdp]:
    instance = SamlIdp(SP_ENTITY_ID, SP_ACS_URL)
    yield instance
    instance.close()


@pytest.fixture(scope="module")
def signed_xml(idp: SamlIdp) -> str:
    return idp.make_response(
        name_id="alice@corp.example",
        attributes={"email": ["alice@corp.example"], "groups": ["engineers", "aws-readonly"]},
        in_response_to=REQUEST_ID,
    )


@pytest.fixture(scope="module")
def assertion_only_xml(idp: SamlIdp) -> str:
    return idp.make_response(
        name_id="alice@corp.example",
        attributes={"groups": ["engineers"]},
        in_response_to=REQUEST_ID,
        sign_response=False,
    )


# ----------------------------------------------------------------- keys & metadata


def test_make_keypair_is_rsa2048_self_signed_and_current() -> None:
    key_pem, cert_pem = make_keypair("unit-test")
    cert = x509.load_pem_x509_certificate(cert_pem)
    now = dt.datetime.now(dt.UTC)
    assert b"PRIVATE KEY" in key_pem
    assert cert.public_key().key_size == 2048  # type: ignore[union-attr]
    assert cert.subject == cert.issuer
    assert cert.not_valid_before_utc <= now - dt.timedelta(hours=23)
    assert cert.not_valid_after_utc >= now + dt.timedelta(days=364)


def test_metadata_carries_entity_id_sso_endpoint_and_signing_cert(idp: SamlIdp) -> None:
    parsed = OneLogin_Saml2_IdPMetadataParser.parse(idp.metadata_xml())
    assert parsed["idp"]["entityId"] == idp.entity_id
    assert parsed["idp"]["singleSignOnService"]["url"] == idp.sso_url
    assert parsed["idp"]["singleSignOnService"]["binding"].endswith("HTTP-Redirect")
    assert parsed["idp"]["x509cert"].replace("\n", "") == idp.cert_base64


# ----------------------------------------------------------------- responses


def test_both_signatures_verify_with_xmlsec1(idp: SamlIdp, signed_xml: str) -> None:
    root = parse(signed_xml)
    assertion = root.find("saml:Assertion", NS)
    assert signed_xml.startswith("<") and not signed_xml.startswith("<?xml")
    assert xmlsec1_verify(signed_xml, idp.cert_pem, root.get("ID"))
    assert xmlsec1_verify(signed_xml, idp.cert_pem, assertion.get("ID"))
    _other_key, other_cert = make_keypair("test-idp")
    assert not xmlsec1_verify(signed_xml, other_cert, root.get("ID"))


def test_response_is_valid_for_strict_python3_saml(idp: SamlIdp, signed_xml: str) -> None:
    resp = sp_validate(idp, signed_xml, want_messages_signed=True)
    assert resp.valid, resp.get_error()
    assert resp.get_nameid() == "alice@corp.example"
    assert resp.get_attributes() == {"email": ["alice@corp.example"], "groups": ["engineers", "aws-readonly"]}
    assert resp.get_authn_contexts() == [AC_PASSWORD_PROTECTED_TRANSPORT]
    assert resp.get_issuers() == [idp.entity_id]
    assert resp.get_in_response_to() == REQUEST_ID


def test_response_fields_default_to_the_sp(signed_xml: str) -> None:
    root = parse(signed_xml)
    assert root.get("Destination") == SP_ACS_URL
    assert root.findtext("saml:Assertion/saml:Conditions/saml:AudienceRestriction/saml:Audience", None, NS) == (
        SP_ENTITY_ID
    )
    scd = root.find("saml:Assertion/saml:Subject/saml:SubjectConfirmation/saml:SubjectConfirmationData", NS)
    assert scd.get("Recipient") == SP_ACS_URL
    assert scd.get("InResponseTo") == REQUEST_ID


def test_clock_override_is_valid_then_and_expired_later(idp: SamlIdp, monkeypatch: pytest.MonkeyPatch) -> None:
    issued = dt.datetime(2031, 5, 4, 12, 0, 0, tzinfo=dt.UTC)
    xml = idp.make_response(name_id="bob@corp.example", attributes={}, in_response_to=REQUEST_ID, now=issued)
    root = parse(xml)
    assert root.get("IssueInstant") == "2031-05-04T12:00:00Z"
    assert root.find("saml:Assertion", NS).get("IssueInstant") == "2031-05-04T12:00:00Z"
    cond = root.find("saml:Assertion/saml:Conditions", NS)
    assert (cond.get("NotBefore"), cond.get("NotOnOrAfter")) == ("2031-05-04T12:00:00Z", "2031-05-04T12:05:00Z")

    monkeypatch.setattr(OneLogin_Saml2_Utils, "now", staticmethod(lambda: int(issued.timestamp()) + 60))
    resp = sp_validate(idp, xml)
    assert resp.valid, resp.get_error()
    monkeypatch.setattr(OneLogin_Saml2_Utils, "now", staticmethod(lambda: int(issued.timestamp()) + 600))
    assert refusal(idp, xml) == "ASSERTION_EXPIRED"


def test_explicit_validity_window(idp: SamlIdp) -> None:
    now = dt.datetime.now(dt.UTC)
    expired = idp.make_response(
        name_id="bob@corp.example", in_response_to=REQUEST_ID, not_on_or_after=now - dt.timedelta(minutes=10)
    )
    assert refusal(idp, expired) == "ASSERTION_EXPIRED"
    future = idp.make_response(
        name_id="bob@corp.example", in_response_to=REQUEST_ID, not_before=now + dt.timedelta(hours=1)
    )
    assert refusal(idp, future) == "ASSERTION_TOO_EARLY"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"audience": "https://other-sp.test/metadata"}, "WRONG_AUDIENCE"),
        ({"destination": "https://other-sp.test/acs"}, "WRONG_DESTINATION"),
        ({"recipient": "https://other-sp.test/acs"}, "WRONG_SUBJECTCONFIRMATION"),
        ({"issuer": "https://impostor.test/idp"}, "WRONG_ISSUER"),
        ({"in_response_to": "_some-other-request"}, "WRONG_INRESPONSETO"),
    ],
)
def test_wrong_party_overrides_are_signed_but_rejected(idp: SamlIdp, override: dict[str, str], expected: str) -> None:
    kwargs: dict[str, Any] = {"name_id": "alice@corp.example", "in_response_to": REQUEST_ID, **override}
    xml = idp.make_response(**kwargs)
    root = parse(xml)
    assert xmlsec1_verify(xml, idp.cert_pem, root.find("saml:Assertion", NS).get("ID"))
    assert next(iter(override.values())) in xml
    assert refusal(idp, xml) == expected


def test_sha1_response_from_the_idp_is_rejected_as_deprecated(idp: SamlIdp) -> None:
    xml = idp.make_response(
        name_id="alice@corp.example", in_response_to=REQUEST_ID, signing_alg=SIG_RSA_SHA1, digest_alg=DIGEST_SHA1
    )
    assert SIG_RSA_SHA1 in xml and DIGEST_SHA1 in xml
    assert xmlsec1_verify(xml, idp.cert_pem, parse(xml).get("ID"))
    resp = sp_validate(idp, xml)
    assert not resp.valid
    assert "deprecated" in (resp.get_error() or "").lower()


def test_post_form_fields_round_trip(signed_xml: str) -> None:
    fields = SamlIdp.post_form_fields(signed_xml, "relay-123")
    assert base64.b64decode(fields["SAMLResponse"]).decode() == signed_xml
    assert fields["RelayState"] == "relay-123"
    assert "RelayState" not in SamlIdp.post_form_fields(signed_xml, None)


def test_parse_authn_request_from_python3_saml(idp: SamlIdp) -> None:
    settings = onelogin_settings(idp.entity_id, idp.sso_url, idp.cert_base64, requested_authn_context=[AC_MFA])
    request = OneLogin_Saml2_Authn_Request(settings)
    request_id, acs_url, requested = idp.parse_authn_request(request.get_request(), "rs")
    assert (request_id, acs_url, requested) == (request.get_id(), SP_ACS_URL, [AC_MFA])
    plain = OneLogin_Saml2_Authn_Request(onelogin_settings(idp.entity_id, idp.sso_url, idp.cert_base64))
    assert idp.parse_authn_request(plain.get_request(), None)[2] is None


# ----------------------------------------------------------------- HTTP server


USERS = {
    "alice": {
        "password": "correct horse battery staple",
        "attributes": {"email": ["alice@corp.example"], "groups": ["engineers"]},
        "name_id": "alice@corp.example",
        "step_up_authn_context": AC_MFA,
    },
    "bob": {"password": "hunter2-but-longer", "attributes": {"email": ["bob@corp.example"]}},
}


@pytest.fixture()
def server() -> Iterator[SamlIdpServer]:
    with SamlIdpServer(SP_ENTITY_ID, SP_ACS_URL, USERS) as srv:  # type: ignore[arg-type]
        yield srv


def _start_login(srv: SamlIdpServer, requested: list[str] | bool = False) -> tuple[str, dict[str, str]]:
    """Send a python3-saml AuthnRequest over HTTP-Redirect; return (request id, login form fields)."""
    settings = onelogin_settings(srv.entity_id, srv.sso_url, srv.idp.cert_base64, requested_authn_context=requested)
    request = OneLogin_Saml2_Authn_Request(settings)
    page = httpx.get(srv.sso_url, params={"SAMLRequest": request.get_request(), "RelayState": "/after-login"})
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    form = parse_page(page.text).forms[0]
    return request.get_id(), {name: spec["value"] for name, spec in form["inputs"].items()}


def _submit(srv: SamlIdpServer, fields: dict[str, str], username: str, password: str) -> httpx.Response:
    return httpx.post(f"{srv.base_url}/idp/login", data={**fields, "username": username, "password": password})


def test_login_form_is_accessible(server: SamlIdpServer) -> None:
    settings = onelogin_settings(server.entity_id, server.sso_url, server.idp.cert_base64)
    request = OneLogin_Saml2_Authn_Request(settings)
    page = httpx.get(server.sso_url, params={"SAMLRequest": request.get_request(), "RelayState": "rs"})
    parsed = parse_page(page.text)
    assert '<html lang="en">' in page.text and "<title>" in page.text
    form = parsed.forms[0]
    assert form["method"] == "post" and form["action"] == "/idp/login"
    assert form["inputs"]["username"]["type"] == "text"
    assert form["inputs"]["password"]["type"] == "password"
    assert parsed.labels == {"username": "Username", "password": "Password"}
    assert re.search(r'<input id="username" name="username"', page.text)
    assert parsed.buttons == ["Sign in"]


def test_http_flow_yields_a_valid_response(server: SamlIdpServer) -> None:
    request_id, fields = _start_login(server)
    reply = _submit(server, fields, "alice", USERS["alice"]["password"])  # type: ignore[arg-type]
    assert reply.status_code == 200
    page = parse_page(reply.text)
    form = page.forms[0]
    assert form["method"] == "post" and form["action"] == SP_ACS_URL
    assert set(form["inputs"]) == {"SAMLResponse", "RelayState"}
    assert form["inputs"]["RelayState"]["value"] == "/after-login"
    assert page.buttons == ["Continue"] and not page.has_script

    xml = base64.b64decode(form["inputs"]["SAMLResponse"]["value"]).decode()
    resp = sp_validate(server.idp, xml, request_id=request_id, want_messages_signed=True)
    assert resp.valid, resp.get_error()
    assert resp.get_nameid() == "alice@corp.example"
    assert resp.get_attributes() == {"email": ["alice@corp.example"], "groups": ["engineers"]}
    assert resp.get_authn_contexts() == [AC_PASSWORD_PROTECTED_TRANSPORT]
    assert server.issued[-1].xml == xml


def test_wrong_password_rerenders_form_with_alert(server: SamlIdpServer) -> None:
    _, fields = _start_login(server)
    reply = _submit(server, fields, "alice", "wrong")
    assert reply.status_code == 401
    assert 'role="alert"' in reply.text
    assert "SAMLResponse" not in reply.text
    assert parse_page(reply.text).buttons == ["Sign in"]


def test_step_up_context_is_asserted_when_requested_and_available(server: SamlIdpServer) -> None:
    request_id, fields = _start_login(server, requested=[AC_MFA])
    reply = _submit(server, fields, "alice", USERS["alice"]["password"])  # type: ignore[arg-type]
    xml = base64.b64decode(parse_page(reply.text).forms[0]["inputs"]["SAMLResponse"]["value"]).decode()
    resp = sp_validate(server.idp, xml, request_id=request_id)
    assert resp.valid, resp.get_error()
    assert resp.get_authn_contexts() == [AC_MFA]


def test_unsatisfiable_context_gets_no_authn_context_status(server: SamlIdpServer) -> None:
    request_id, fields = _start_login(server, requested=[AC_MFA])
    reply = _submit(server, fields, "bob", USERS["bob"]["password"])  # type: ignore[arg-type]
    xml = base64.b64decode(parse_page(reply.text).forms[0]["inputs"]["SAMLResponse"]["value"]).decode()
    assert "urn:oasis:names:tc:SAML:2.0:status:NoAuthnContext" in xml
    assert parse(xml).find("saml:Assertion", NS) is None
    assert refusal(server.idp, xml, request_id=request_id) == "STATUS_CODE_IS_NOT_SUCCESS"


def test_server_serves_metadata_and_rejects_garbage(server: SamlIdpServer) -> None:
    meta = httpx.get(server.metadata_url)
    assert meta.status_code == 200 and server.entity_id in meta.text
    assert httpx.get(server.sso_url, params={"SAMLRequest": "not-a-request"}).status_code == 400
    assert httpx.get(server.sso_url).status_code == 400


def test_auto_submit_option_adds_script_but_keeps_button() -> None:
    with SamlIdpServer(SP_ENTITY_ID, SP_ACS_URL, USERS, auto_submit=True) as srv:  # type: ignore[arg-type]
        _, fields = _start_login(srv)
        page = parse_page(_submit(srv, fields, "bob", USERS["bob"]["password"]).text)  # type: ignore[arg-type]
        assert page.has_script and page.buttons == ["Continue"]


# ----------------------------------------------------------------- mutations


def test_assertion_signed_only_is_valid_when_only_assertions_must_be_signed(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.assertion_signed_only(signed_xml)
    root = parse(xml)
    assert root.find("ds:Signature", NS) is None
    assert root.find("saml:Assertion/ds:Signature", NS) is not None
    assert accepted(idp, xml)
    assert refusal(idp, xml, want_messages_signed=True) == "NO_SIGNED_MESSAGE"


@pytest.mark.parametrize("xsw", [mut.xsw1, mut.xsw2])
def test_response_xsw_keeps_signed_original_and_adds_evil(idp: SamlIdp, signed_xml: str, xsw: Any) -> None:
    xml = xsw(signed_xml)
    root = parse(xml)
    assert root.get("ID") == "_evil_response_ID"
    assert root.find("saml:Assertion/saml:Subject/saml:NameID", NS).text == mut.EVIL_NAME_ID
    signature = root.find("ds:Signature", NS)
    hidden = signature.find("samlp:Response", NS) if xsw is mut.xsw1 else signature.getprevious()
    assert hidden is not None and hidden.tag == f"{{{NS['samlp']}}}Response"
    original = parse(signed_xml)
    original.remove(original.find("ds:Signature", NS))
    assert c14n(hidden) == c14n(original)  # the signed content, byte for byte
    assert ref_uri(signature) == "#" + original.get("ID")
    assert refusal(idp, xml, want_messages_signed=True) == "WRONG_NUMBER_OF_ASSERTIONS"


@pytest.mark.parametrize("xsw", [mut.xsw3, mut.xsw4, mut.xsw5, mut.xsw6, mut.xsw7, mut.xsw8])
def test_assertion_xsw_variants(idp: SamlIdp, assertion_only_xml: str, xsw: Any) -> None:
    xml = xsw(assertion_only_xml)
    assert xml != assertion_only_xml
    assert sorted(mut.name_ids(xml)) == sorted(["alice@corp.example", mut.EVIL_NAME_ID])
    original_id = parse(assertion_only_xml).find("saml:Assertion", NS).get("ID")
    root = parse(xml)
    first = root.find("saml:Assertion", NS)
    if xsw is mut.xsw7:  # evil copy inside samlp:Extensions, before the untouched original
        evil = root.find("samlp:Extensions/saml:Assertion", NS)
        assert evil.findtext("saml:Subject/saml:NameID", None, NS) == mut.EVIL_NAME_ID
        assert evil.get("ID") == original_id and evil.find("ds:Signature", NS) is None
    else:  # the first assertion under the Response carries the evil NameID
        assert first.findtext("saml:Subject/saml:NameID", None, NS) == mut.EVIL_NAME_ID
    if xsw in (mut.xsw3, mut.xsw4):
        assert first.get("ID") == "_evil_assertion_ID" and first.find("ds:Signature", NS) is None
        assert xmlsec1_verify(xml, idp.cert_pem, original_id)  # the signed original still verifies
    if xsw is mut.xsw5:  # the evil assertion's own signature verifies -- against the appended copy
        assert xmlsec1_verify(xml, idp.cert_pem, "_evil_assertion_ID")
        assert ref_uri(first.find("ds:Signature", NS)) == "#" + original_id
    if xsw is mut.xsw6:
        assert first.find("ds:Signature/saml:Assertion", NS).get("ID") == original_id
    if xsw is mut.xsw8:
        assert first.find("ds:Signature/ds:Object/saml:Assertion", NS).get("ID") == original_id
    assert refusal(idp, xml) == "WRONG_NUMBER_OF_ASSERTIONS"


def test_strip_signatures(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.strip_signatures(signed_xml)
    assert parse(xml).find(".//ds:Signature", NS) is None
    assert mut.name_ids(xml) == ["alice@corp.example"]
    assert refusal(idp, xml, want_assertions_signed=False) == "NO_SIGNATURE_FOUND"


def test_remove_assertion_signature_keeps_a_valid_response_signature(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.remove_assertion_signature(signed_xml, idp.key_pem, idp.cert_pem)
    root = parse(xml)
    assert root.find("saml:Assertion/ds:Signature", NS) is None
    assert xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert refusal(idp, xml) == "NO_SIGNED_ASSERTION"  # wantAssertionsSigned
    assert accepted(idp, xml, want_assertions_signed=False, want_messages_signed=True)


def test_tamper_name_id_breaks_the_digest(idp: SamlIdp, assertion_only_xml: str) -> None:
    xml = mut.tamper_name_id(assertion_only_xml)
    assert mut.name_ids(xml) == [mut.EVIL_NAME_ID]
    assert not xmlsec1_verify(xml, idp.cert_pem, parse(xml).find("saml:Assertion", NS).get("ID"))


def test_reference_other_element(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.reference_other_element(signed_xml, idp.key_pem, idp.cert_pem)
    root = parse(xml)
    assertion = root.find("saml:Assertion", NS)
    assert assertion.findtext("saml:Subject/saml:NameID", None, NS) == mut.EVIL_NAME_ID
    assert ref_uri(assertion.find("ds:Signature", NS)) == "#_decoy_assertion_ID" != "#" + assertion.get("ID")
    assert xmlsec1_verify(xml, idp.cert_pem, assertion.get("ID"))  # cryptographically valid
    assert refusal(idp, xml) == "WRONG_NUMBER_OF_ASSERTIONS"


def test_duplicate_ids(idp: SamlIdp, assertion_only_xml: str) -> None:
    xml = mut.duplicate_ids(assertion_only_xml)
    ids = [a.get("ID") for a in parse(xml).findall("saml:Assertion", NS)]
    assert len(ids) == 2 and ids[0] == ids[1]
    assert mut.name_ids(xml) == [mut.EVIL_NAME_ID, "alice@corp.example"]
    assert refusal(idp, xml) == "WRONG_NUMBER_OF_ASSERTIONS"


def test_foreign_key_signature(idp: SamlIdp, signed_xml: str) -> None:
    attacker_key, attacker_cert = make_keypair("test-idp")
    xml = mut.foreign_key_signature(signed_xml, attacker_key, attacker_cert)
    root = parse(xml)
    embedded = root.findtext("ds:Signature/ds:KeyInfo/ds:X509Data/ds:X509Certificate", None, NS)
    assert "".join(embedded.split()) != idp.cert_base64
    assert xmlsec1_verify(xml, attacker_cert, root.get("ID"))
    assert not xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert mut.name_ids(xml) == [mut.EVIL_NAME_ID]
    assert refusal(idp, xml) == "INVALID_SIGNATURE"
    # Default: a generated look-alike key.
    assert mut.name_ids(mut.foreign_key_signature(signed_xml)) == [mut.EVIL_NAME_ID]


def test_sha1_signature_mutation(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.sha1_signature(signed_xml, idp.key_pem, idp.cert_pem)
    root = parse(xml)
    assert {m.get("Algorithm") for m in root.iter(f"{{{NS['ds']}}}SignatureMethod")} == {SIG_RSA_SHA1}
    assert {m.get("Algorithm") for m in root.iter(f"{{{NS['ds']}}}DigestMethod")} == {DIGEST_SHA1}
    assert xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert xmlsec1_verify(xml, idp.cert_pem, root.find("saml:Assertion", NS).get("ID"))
    assert refusal(idp, xml) == "DEPRECATED_SIGNATURE_METHOD"


@pytest.mark.parametrize("resign_with_real_key", [False, True])
def test_comment_injection_keeps_signatures_valid(idp: SamlIdp, resign_with_real_key: bool) -> None:
    base = idp.make_response(name_id="user@corp.example.evil.com", in_response_to=REQUEST_ID)
    keys = (idp.key_pem, idp.cert_pem) if resign_with_real_key else (None, None)
    xml = mut.inject_comment_in_name_id(base, "user@corp.example", *keys)
    assert "user@corp.example<!---->.evil.com" in xml
    name_id = parse(xml).find(".//saml:NameID", NS)
    assert name_id.text == "user@corp.example"  # what a naive consumer reads
    root = parse(xml)
    assert xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert xmlsec1_verify(xml, idp.cert_pem, root.find("saml:Assertion", NS).get("ID"))
    resp = sp_validate(idp, xml)  # python3-saml is not fooled: it reads the whole text
    assert resp.valid, resp.get_error()
    assert resp.get_nameid() == "user@corp.example.evil.com"


def test_xxe_doctype(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.xxe_doctype(signed_xml)
    assert xml.startswith('<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>')
    assert "&e;" in xml and "root:" not in xml
    assert refusal(idp, xml) == "DTDForbidden"


def test_billion_laughs(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.billion_laughs(signed_xml)
    assert xml.startswith("<!DOCTYPE lolz [") and '<!ENTITY lol9 "&lol8;' in xml and "&lol9;" in xml
    assert len(xml) < len(signed_xml) + 2000  # the bomb is in the expansion, not the bytes
    assert refusal(idp, xml) == "XMLSyntaxError"


def test_two_assertions_each_validly_signed(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.two_assertions(signed_xml, idp.key_pem, idp.cert_pem)
    root = parse(xml)
    assertions = root.findall("saml:Assertion", NS)
    assert len(assertions) == 2 and assertions[0].get("ID") != assertions[1].get("ID")
    assert all(xmlsec1_verify(xml, idp.cert_pem, a.get("ID")) for a in assertions)
    assert xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert mut.name_ids(xml) == ["alice@corp.example", mut.EVIL_NAME_ID]
    assert refusal(idp, xml) == "WRONG_NUMBER_OF_ASSERTIONS"


def test_oversized_response_is_over_1mb_and_still_signed(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.oversized(signed_xml)
    assert len(xml.encode()) > 1_000_000
    root = parse(xml)
    assert xmlsec1_verify(xml, idp.cert_pem, root.get("ID"))
    assert xmlsec1_verify(xml, idp.cert_pem, root.find("saml:Assertion", NS).get("ID"))


def test_resign_round_trip(idp: SamlIdp, signed_xml: str) -> None:
    xml = mut.resign(signed_xml, idp.key_pem, idp.cert_pem, sign_assertion=True, sign_response=True)
    assert xml != signed_xml
    resp = sp_validate(idp, xml, want_messages_signed=True)
    assert resp.valid, resp.get_error()
    only_response = mut.resign(signed_xml, idp.key_pem, idp.cert_pem, sign_assertion=False, sign_response=True)
    assert parse(only_response).find("saml:Assertion/ds:Signature", NS) is None


def test_mutations_do_not_modify_their_input(signed_xml: str) -> None:
    before = str(signed_xml)
    mut.xsw1(signed_xml)
    mut.strip_signatures(signed_xml)
    assert signed_xml == before
