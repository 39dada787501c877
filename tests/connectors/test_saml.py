"""The SAML connector on its own: configuration, metadata import, key rollover, AuthnRequests, time bounds and
the identity it builds. Responses come from the real pysaml2 IdP (xmlsec1); no database, no HTTP."""

from __future__ import annotations

import base64
import datetime as dt
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from pydantic import ValidationError

from broker.connectors.saml import SamlConnector, SamlRejected
from broker.errors import ConfigError
from broker.identity import MfaLevel
from broker.settings import SamlStoreConfig, load_settings
from tests.conftest import SECRET
from tests.support.saml_idp import AC_MFA, AC_PASSWORD_PROTECTED_TRANSPORT, SamlIdp, make_keypair

PUBLIC_URL = "https://broker.example.com"
ENTITY_ID = f"{PUBLIC_URL}/saml/corp/metadata"
ACS_URL = f"{PUBLIC_URL}/saml/corp/acs"
AC_STRONG = "urn:test:ac:classes:phishing-resistant"
ATTRIBUTES = {"email": ["alice@corp.example"], "groups": ["engineering", "admins"], "uid": ["alice"]}


@pytest.fixture(scope="module")
def idp() -> SamlIdp:
    return SamlIdp(ENTITY_ID, ACS_URL)


def connector(idp: SamlIdp, **overrides: Any) -> SamlConnector:
    store: dict[str, Any] = {
        "type": "saml",
        "name": "corp",
        "idp_entity_id": idp.entity_id,
        "sso_url": idp.sso_url,
        "certificates": [idp.cert_pem.decode()],
        "authn_context": {"mfa": [AC_MFA], "phishing_resistant": [AC_STRONG]},
    }
    store.update(overrides)
    return SamlConnector(SamlStoreConfig(**store), public_url=PUBLIC_URL)


def parsed_value(url: str) -> str:
    return parse_qs(urlsplit(url).query)["SAMLRequest"][0]


def b64(xml: str) -> str:
    return base64.b64encode(xml.encode()).decode()


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_sp_urls_come_from_public_url(idp: SamlIdp) -> None:
    sp = connector(idp)
    assert (sp.entity_id, sp.acs_url, sp.start_path) == (ENTITY_ID, ACS_URL, "/saml/corp/login")


def test_settings_list_every_missing_idp_field() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, secret_key=SECRET, identity_stores=[{"type": "saml", "name": "corp"}])
    assert "idp_entity_id" in str(caught.value) and "certificates" in str(caught.value)


def test_a_certificate_that_is_not_one_is_a_config_error(idp: SamlIdp) -> None:
    # Refused by the configuration itself, so `broker config check` reports it with every other problem.
    with pytest.raises(ValidationError) as caught:
        connector(idp, certificates=["not a certificate"])
    (error,) = caught.value.errors()
    assert error["loc"] == ("certificates",)
    assert error["msg"] == "Value error, certificates[0] is not an X.509 certificate (PEM, or the base64 body of one)"


def test_idp_is_imported_from_a_metadata_file(idp: SamlIdp, tmp_path: Path) -> None:
    path = tmp_path / "idp.xml"
    path.write_text(idp.metadata_xml())
    sp = connector(idp, idp_entity_id=None, sso_url=None, certificates=[], metadata_file=str(path))
    assert (sp.idp_entity_id, sp.sso_url) == (idp.entity_id, idp.sso_url)
    assert len(sp.certificates) == 1
    xml = idp.make_response(name_id="alice@corp.example", in_response_to=None)
    assert sp.check(b64(xml), now=now()).issuer == idp.entity_id


def test_certificate_rollover_accepts_either_pinned_key_and_nothing_else(idp: SamlIdp) -> None:
    new_key, new_cert = make_keypair("test-idp-2026")
    new_idp = SamlIdp(ENTITY_ID, ACS_URL, key_pem=new_key, cert_pem=new_cert)
    sp = connector(idp, certificates=[idp.cert_pem.decode(), new_cert.decode()])
    for signer in (idp, new_idp):
        xml = signer.make_response(name_id="alice@corp.example", in_response_to=None)
        assert sp.check(b64(xml), now=now()).assertion_id
    only_old = connector(idp)
    with pytest.raises(SamlRejected) as caught:
        only_old.check(b64(new_idp.make_response(name_id="alice@corp.example", in_response_to=None)), now=now())
    assert caught.value.reason == "saml.signature_invalid"


@pytest.mark.parametrize(
    ("level", "requested"),
    [(MfaLevel.NONE, None), (MfaLevel.MFA, [AC_MFA, AC_STRONG]), (MfaLevel.PHISHING_RESISTANT, [AC_STRONG])],
)
def test_authn_request_asks_for_the_step_up_context(idp: SamlIdp, level: MfaLevel, requested: Any) -> None:
    redirect = connector(idp).authn_request(level=level)
    assert redirect.url.startswith(idp.sso_url + "?SAMLRequest=")
    parsed = idp.parse_authn_request_full(parsed_value(redirect.url), None)
    assert parsed.request_id == redirect.request_id and parsed.acs_url == ACS_URL
    assert parsed.requested_authn_context == requested
    xml = zlib.decompress(base64.b64decode(parsed_value(redirect.url)), -15)
    assert (b'ForceAuthn="true"' in xml) == (level > MfaLevel.NONE)


def test_step_up_contexts_can_be_configured_explicitly(idp: SamlIdp) -> None:
    sp = connector(idp, step_up={"mfa": ["urn:custom:mfa"]})
    parsed = idp.parse_authn_request_full(parsed_value(sp.authn_request(level=MfaLevel.MFA).url), None)
    assert parsed.requested_authn_context == ["urn:custom:mfa"]


@pytest.mark.parametrize(
    ("class_ref", "level"),
    [
        (AC_PASSWORD_PROTECTED_TRANSPORT, MfaLevel.NONE),
        (AC_MFA, MfaLevel.MFA),
        (AC_STRONG, MfaLevel.PHISHING_RESISTANT),
    ],
)
def test_identity_after_checks(idp: SamlIdp, class_ref: str, level: MfaLevel) -> None:
    sp = connector(idp, attributes={"username": "uid", "email": "email", "groups": "groups"})
    xml = idp.make_response(
        name_id="alice@corp.example", attributes=ATTRIBUTES, in_response_to="_r1", authn_context_class_ref=class_ref
    )
    checked = sp.check(b64(xml), now=now())
    assert checked.in_response_to == "_r1"
    identity = sp.identity(checked)
    assert (identity.subject, identity.username, identity.email) == (
        "alice@corp.example",
        "alice",
        "alice@corp.example",
    )
    assert identity.groups == {"engineering", "admins"} and identity.store == "corp"
    assert identity.issuer == idp.entity_id
    assert identity.attributes == {"email": "alice@corp.example", "uid": "alice"}
    assert identity.mfa.level == level and identity.mfa.methods == (class_ref,)


def test_clock_skew_and_maximum_age_bound_acceptance(idp: SamlIdp) -> None:
    sp = connector(idp, clock_skew_seconds=60, max_assertion_age_seconds=300)
    issued = now()
    xml = b64(idp.make_response(name_id="a@corp.example", in_response_to=None, now=issued))
    assert sp.check(xml, now=issued + dt.timedelta(seconds=50)).replay_until >= issued + dt.timedelta(minutes=5)
    with pytest.raises(SamlRejected) as caught:
        sp.check(xml, now=issued - dt.timedelta(seconds=61))
    assert caught.value.reason == "saml.not_yet_valid"
    with pytest.raises(SamlRejected) as caught:
        sp.check(xml, now=issued + dt.timedelta(minutes=6, seconds=1))
    assert caught.value.reason == "saml.expired"
    long_lived = b64(
        idp.make_response(name_id="a@corp.example", in_response_to=None, now=issued, lifetime=dt.timedelta(hours=8))
    )
    with pytest.raises(SamlRejected) as caught:
        sp.check(long_lived, now=issued + dt.timedelta(minutes=7))
    assert caught.value.reason == "saml.too_old"


def test_a_comment_inside_the_nameid_is_refused_not_truncated(idp: SamlIdp) -> None:
    """Exclusive c14n drops comments, so the signature still verifies; the broker refuses the shape."""
    from tests.support import saml_mutations as mut

    base = idp.make_response(name_id="alice@corp.example.evil.com", in_response_to=None)
    xml = mut.inject_comment_in_name_id(base, "alice@corp.example", idp.key_pem, idp.cert_pem)
    with pytest.raises(SamlRejected) as caught:
        connector(idp).check(b64(xml), now=now())
    assert caught.value.reason == "saml.nameid_comment"
    plain = connector(idp).check(b64(base), now=now())
    assert connector(idp).identity(plain).subject == "alice@corp.example.evil.com"


def test_metadata_names_the_acs_and_wants_signed_assertions(idp: SamlIdp) -> None:
    xml = connector(idp).metadata_xml()
    assert f'entityID="{ENTITY_ID}"' in xml and f'Location="{ACS_URL}"' in xml
    assert 'WantAssertionsSigned="true"' in xml


SP_KEY, SP_CERT = make_keypair("broker-sp")


def test_single_logout_needs_the_brokers_key_and_certificate_together(idp: SamlIdp) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="set both sp_private_key and sp_certificate"):
        connector(idp, sp_private_key=SP_KEY.decode())
    with pytest.raises(ValidationError, match="slo_url needs sp_private_key and sp_certificate"):
        connector(idp, slo_url="https://idp.example/slo")
    with pytest.raises(ValidationError, match="subject"):
        connector(idp, subject="attribute:uid")
    assert connector(idp).logout is None


def test_sp_metadata_lists_single_logout_and_the_signing_certificate_only_with_a_key(idp: SamlIdp) -> None:
    plain = connector(idp).metadata_xml()
    assert "SingleLogoutService" not in plain and "KeyDescriptor" not in plain
    with_key = connector(idp, sp_private_key=SP_KEY.decode(), sp_certificate=SP_CERT.decode())
    xml = with_key.metadata_xml()
    assert f'Location="{PUBLIC_URL}/saml/corp/slo"' in xml
    assert 'use="signing"' in xml
    assert "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent" in xml
    assert with_key.logout is not None and not with_key.logout.idp_supports_slo


def test_the_idp_slo_endpoint_is_read_from_metadata(idp: SamlIdp, tmp_path: Path) -> None:
    from lxml import etree

    md = "urn:oasis:names:tc:SAML:2.0:metadata"
    root = etree.fromstring(idp.metadata_xml().encode())
    descriptor = root.find(f"{{{md}}}IDPSSODescriptor")
    assert descriptor is not None
    slo = etree.Element(f"{{{md}}}SingleLogoutService")
    slo.set("Binding", "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect")
    slo.set("Location", "https://idp.example/slo")
    descriptor.insert(0, slo)
    path = tmp_path / "idp.xml"
    path.write_bytes(etree.tostring(root))
    sp = connector(
        idp,
        idp_entity_id=None,
        sso_url=None,
        certificates=[],
        metadata_file=str(path),
        sp_private_key=SP_KEY.decode(),
        sp_certificate=SP_CERT.decode(),
    )
    assert sp.logout is not None and sp.logout.idp_slo_url == "https://idp.example/slo"
