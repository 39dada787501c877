"""SAML single logout over HTTP, with the pysaml2 IdP peer's key: the IdP's LogoutRequest ends the sessions it
names and is answered with a signed LogoutResponse; the broker's own LogoutRequest is signed and its answer
checked; every hostile logout message is refused with its reason, one audit event, and the session left alone.

Messages are built here (XML, raw DEFLATE, an RSA signature over the query string as bindings 3.4.4.1 defines
it), so each one can be mutated in exactly one way.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, quote_plus, urlsplit

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from lxml import etree
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import SamlSession
from tests.support.portal import csrf_from
from tests.support.saml_broker import STORE, SamlRig
from tests.support.saml_idp import make_keypair

RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
RSA_SHA1 = "http://www.w3.org/2000/09/xmldsig#rsa-sha1"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
NS = {"samlp": "urn:oasis:names:tc:SAML:2.0:protocol", "saml": "urn:oasis:names:tc:SAML:2.0:assertion"}
SP_KEY, SP_CERT = make_keypair("broker-sp")


@pytest.fixture
def rig_with_idp_slo(make_config: Callable[..., dict[str, Any]]) -> Iterator[SamlRig]:
    with SamlRig(make_config(), store_overrides=_slo_overrides()) as r:
        yield r


def _slo_overrides(idp_slo: str | None = "http://127.0.0.1:9/idp/slo") -> dict[str, Any]:
    overrides: dict[str, Any] = {"sp_private_key": SP_KEY.decode(), "sp_certificate": SP_CERT.decode()}
    if idp_slo:
        overrides["slo_url"] = idp_slo
    return overrides


def signed_in(rig: SamlRig) -> httpx.Client:
    client = rig.client()
    started = rig.begin(client)
    reply = rig.post(client, rig.respond(started))
    assert reply.status_code == 303, reply.text[:300]
    assert client.get("/").status_code == 200
    return client


def _instant(moment: dt.datetime | None = None) -> str:
    return (moment or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def logout_request(
    rig: SamlRig,
    *,
    issuer: str | None = None,
    destination: str | None = "default",
    name_id: str = "alice@corp.example",
    session_index: str | None = None,
    issued: dt.datetime | None = None,
) -> bytes:
    issuer_xml = "" if issuer == "" else f"<saml:Issuer>{issuer or rig.idp_server.entity_id}</saml:Issuer>"
    where = f"{rig.url}/saml/{STORE}/slo" if destination == "default" else destination
    dest = "" if where is None else f' Destination="{where}"'
    index = "" if session_index is None else f"<samlp:SessionIndex>{session_index}</samlp:SessionIndex>"
    return (
        f'<samlp:LogoutRequest xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" ID="_{uuid.uuid4().hex}" '
        f'Version="2.0" IssueInstant="{_instant(issued)}"{dest}>{issuer_xml}'
        f'<saml:NameID Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress">{name_id}</saml:NameID>'
        f"{index}</samlp:LogoutRequest>"
    ).encode()


def logout_response(rig: SamlRig, in_response_to: str, *, status: str = SUCCESS) -> bytes:
    return (
        f'<samlp:LogoutResponse xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" ID="_{uuid.uuid4().hex}" '
        f'Version="2.0" IssueInstant="{_instant()}" Destination="{rig.url}/saml/{STORE}/slo" '
        f'InResponseTo="{in_response_to}"><saml:Issuer>{rig.idp_server.entity_id}</saml:Issuer>'
        f'<samlp:Status><samlp:StatusCode Value="{status}"/></samlp:Status></samlp:LogoutResponse>'
    ).encode()


def redirect_query(
    xml: bytes,
    key_pem: bytes | None,
    *,
    parameter: str = "SAMLRequest",
    sig_alg: str = RSA_SHA256,
    deflated: bytes | None = None,
) -> str:
    """The HTTP-Redirect binding (bindings 3.4.4.1): raw DEFLATE, base64, and a signature over the query."""
    body = deflated if deflated is not None else zlib.compress(xml)[2:-4]
    query = f"{parameter}={quote_plus(base64.b64encode(body).decode())}&SigAlg={quote_plus(sig_alg)}"
    if key_pem is None:
        return query
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    digest = hashes.SHA1() if sig_alg == RSA_SHA1 else hashes.SHA256()  # noqa: S303 - the refused algorithm
    signature = key.sign(query.encode(), padding.PKCS1v15(), digest)
    return f"{query}&Signature={quote_plus(base64.b64encode(signature).decode())}"


def inflate(value: str) -> etree._Element:
    return etree.fromstring(zlib.decompress(base64.b64decode(value), -15))


def verify_broker_signature(location: str, parameter: str) -> dict[str, str]:
    """Check the broker's own HTTP-Redirect signature with its certificate; return the query's values."""
    raw = urlsplit(location).query
    # Bindings 3.4.4.1: the message, RelayState and SigAlg as they appear in the URL, in that order.
    parts = dict(part.split("=", 1) for part in raw.split("&"))
    signed = "&".join(f"{name}={parts[name]}" for name in (parameter, "RelayState", "SigAlg") if name in parts)
    values = {k: v[0] for k, v in parse_qs(raw).items()}
    assert values["SigAlg"] == RSA_SHA256 and parameter in values
    public_key = x509.load_pem_x509_certificate(SP_CERT).public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    public_key.verify(base64.b64decode(values["Signature"]), signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return values


def logout_events(rig: SamlRig, after: int) -> list[tuple[str, str, str | None]]:
    return [(e.event, e.outcome, e.reason) for e in _audit(rig) if e.seq > after]


def _audit(rig: SamlRig) -> list[Any]:
    from broker.store import queries

    database = Database(rig.settings.database_url)
    try:
        with database.transaction() as session:
            rows = list(queries.iter_audit_events(session))
            session.expunge_all()
            return rows
    finally:
        database.dispose()


def _last_seq(rig: SamlRig) -> int:
    rows = _audit(rig)
    return rows[-1].seq if rows else 0


# ---------------------------------------------------------------------------- IdP-initiated


def test_idp_logout_request_ends_the_session_and_is_answered_signed(
    rig_with_idp_slo: SamlRig, database: Database
) -> None:
    rig = rig_with_idp_slo
    client = signed_in(rig)
    before = _last_seq(rig)
    xml = logout_request(rig)
    reply = client.get(f"/saml/{STORE}/slo?" + redirect_query(xml, rig.idp_server.key_pem))
    assert reply.status_code == 303, reply.text[:300]
    location = reply.headers["location"]
    assert location.startswith("http://127.0.0.1:9/idp/slo?")
    values = verify_broker_signature(location, "SAMLResponse")
    answer = inflate(values["SAMLResponse"])
    assert answer.get("InResponseTo") == etree.fromstring(xml).get("ID")
    assert answer.find("samlp:Status/samlp:StatusCode", NS).get("Value") == SUCCESS  # type: ignore[union-attr]
    assert logout_events(rig, before) == [("logout", "ok", "idp_logout")]
    assert client.get("/").status_code == 303  # the broker session is gone
    with database.transaction() as session:
        assert session.scalars(select(SamlSession)).all() == []


def test_idp_logout_request_for_another_session_index_leaves_this_session(
    rig_with_idp_slo: SamlRig, database: Database
) -> None:
    rig = rig_with_idp_slo
    client = signed_in(rig)
    with database.transaction() as session:
        [row] = session.scalars(select(SamlSession)).all()
        assert row.logout["session_index"]  # pysaml2 sends one; the broker kept it
    xml = logout_request(rig, session_index="some-other-session")
    reply = client.get(f"/saml/{STORE}/slo?" + redirect_query(xml, rig.idp_server.key_pem))
    assert reply.status_code == 303
    assert client.get("/").status_code == 200


def _bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(b"<a>" + b" " * (10 * 1024 * 1024)) + compressor.flush()


HOSTILE: dict[str, tuple[Callable[[SamlRig], str], str, int]] = {
    "unsigned": (lambda r: redirect_query(logout_request(r), None), "saml.logout_unsigned", 400),
    "signed by another key": (
        lambda r: redirect_query(logout_request(r), make_keypair("attacker")[0]),
        "saml.signature_invalid",
        400,
    ),
    "sha1": (
        lambda r: redirect_query(logout_request(r), r.idp_server.key_pem, sig_alg=RSA_SHA1),
        "saml.deprecated_algorithm",
        400,
    ),
    "wrong issuer": (
        lambda r: redirect_query(logout_request(r, issuer="https://evil.example/idp"), r.idp_server.key_pem),
        "saml.issuer_mismatch",
        400,
    ),
    "no issuer": (
        lambda r: redirect_query(logout_request(r, issuer=""), r.idp_server.key_pem),
        "saml.issuer_mismatch",
        400,
    ),
    "no destination": (
        lambda r: redirect_query(logout_request(r, destination=None), r.idp_server.key_pem),
        "saml.destination_mismatch",
        400,
    ),
    "destination prefix": (
        lambda r: redirect_query(
            logout_request(r, destination=f"{r.url}/saml/{STORE}/slo/extra"), r.idp_server.key_pem
        ),
        "saml.destination_mismatch",
        400,
    ),
    "old": (
        lambda r: redirect_query(
            logout_request(r, issued=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)), r.idp_server.key_pem
        ),
        "saml.too_old",
        400,
    ),
    "deflate bomb": (
        lambda r: redirect_query(b"", r.idp_server.key_pem, deflated=_bomb()),
        "saml.too_large",
        413,
    ),
    "not deflate": (
        lambda r: redirect_query(b"", r.idp_server.key_pem, deflated=b"<not deflated/>"),
        "saml.logout_malformed",
        400,
    ),
    "repeated parameter": (
        lambda r: redirect_query(logout_request(r), r.idp_server.key_pem) + "&SAMLRequest=x",
        "saml.logout_malformed",
        400,
    ),
    "answer to nothing": (
        lambda r: redirect_query(logout_response(r, "_never-sent"), r.idp_server.key_pem, parameter="SAMLResponse"),
        "saml.logout_in_response_to_unknown",
        400,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_logout_messages_are_refused_and_audited_once(rig_with_idp_slo: SamlRig, case: str) -> None:
    rig = rig_with_idp_slo
    build, reason, status = HOSTILE[case]
    client = signed_in(rig)
    before = _last_seq(rig)
    reply = client.get(f"/saml/{STORE}/slo?" + build(rig), headers={"Accept": "application/json"})
    assert reply.status_code == status, reply.text[:300]
    assert "location" not in reply.headers
    assert logout_events(rig, before) == [("logout", "denied", reason)]
    assert client.get("/").status_code == 200  # the session was not touched


def test_a_replayed_logout_request_is_refused(rig_with_idp_slo: SamlRig) -> None:
    rig = rig_with_idp_slo
    client = signed_in(rig)
    query = redirect_query(logout_request(rig), rig.idp_server.key_pem)
    assert client.get(f"/saml/{STORE}/slo?" + query).status_code == 303
    client = signed_in(rig)  # signed in again: the copy must not end this session
    before = _last_seq(rig)
    reply = client.get(f"/saml/{STORE}/slo?" + query, headers={"Accept": "application/json"})
    assert (reply.status_code, reply.json()["error"]) == (400, "invalid_grant")
    assert logout_events(rig, before) == [("logout", "denied", "saml_logout_replay")]
    assert client.get("/").status_code == 200


def test_without_a_broker_key_there_is_no_single_logout(make_config: Callable[..., dict[str, Any]]) -> None:
    with SamlRig(make_config()) as rig:
        client = signed_in(rig)
        before = _last_seq(rig)
        query = redirect_query(logout_request(rig), rig.idp_server.key_pem)
        reply = client.get(f"/saml/{STORE}/slo?" + query, headers={"Accept": "application/json"})
        assert (reply.status_code, reply.json()["error"]) == (404, "not_found")
        assert logout_events(rig, before) == [("logout", "denied", "saml.slo_disabled")]
        assert client.get("/").status_code == 200
        assert b"SingleLogoutService" not in client.get(f"/saml/{STORE}/metadata").content


# ---------------------------------------------------------------------------- SP-initiated


def _sign_out(rig: SamlRig, client: httpx.Client) -> str:
    portal = client.get("/", headers={"Accept": "text/html"})
    reply = client.post("/logout", data={"csrf": csrf_from(portal.text)})
    assert reply.status_code == 303
    return str(reply.headers["location"])


def test_sign_out_sends_a_signed_logout_request_and_accepts_the_signed_answer(rig_with_idp_slo: SamlRig) -> None:
    rig = rig_with_idp_slo
    client = signed_in(rig)
    location = _sign_out(rig, client)
    assert location.startswith("http://127.0.0.1:9/idp/slo?")
    request = inflate(verify_broker_signature(location, "SAMLRequest")["SAMLRequest"])
    assert request.tag == f"{{{NS['samlp']}}}LogoutRequest"
    assert request.findtext("saml:NameID", namespaces=NS) == "alice@corp.example"
    assert request.findtext("samlp:SessionIndex", namespaces=NS)
    assert request.findtext("saml:Issuer", namespaces=NS) == rig.entity_id
    assert client.get("/").status_code == 303  # the broker session ended before the IdP was asked

    answer = redirect_query(
        logout_response(rig, str(request.get("ID"))), rig.idp_server.key_pem, parameter="SAMLResponse"
    )
    reply = client.get(f"/saml/{STORE}/slo?" + answer)
    assert (reply.status_code, reply.headers["location"]) == (303, f"/signed-out?store={STORE}&idp_session=ended")
    # The same answer again names no sign-out in flight.
    before = _last_seq(rig)
    again = client.get(f"/saml/{STORE}/slo?" + answer, headers={"Accept": "application/json"})
    assert again.status_code == 400
    assert logout_events(rig, before) == [("logout", "denied", "saml.logout_in_response_to_unknown")]


def test_an_idp_that_could_not_sign_out_is_reported(rig_with_idp_slo: SamlRig) -> None:
    rig = rig_with_idp_slo
    client = signed_in(rig)
    request = inflate(verify_broker_signature(_sign_out(rig, client), "SAMLRequest")["SAMLRequest"])
    before = _last_seq(rig)
    failed = logout_response(rig, str(request.get("ID")), status="urn:oasis:names:tc:SAML:2.0:status:Responder")
    reply = client.get(f"/saml/{STORE}/slo?" + redirect_query(failed, rig.idp_server.key_pem, parameter="SAMLResponse"))
    assert reply.status_code == 400
    assert "did not confirm that it signed you out" in reply.text
    assert logout_events(rig, before) == [("logout", "denied", "saml.logout_not_success")]


def test_sign_out_without_idp_slo_says_the_idp_session_lives_on(make_config: Callable[..., dict[str, Any]]) -> None:
    with SamlRig(make_config(), store_overrides=_slo_overrides(idp_slo=None)) as rig:
        client = signed_in(rig)
        assert _sign_out(rig, client) == f"/signed-out?store={STORE}&idp_session=kept"
        page = client.get(f"/signed-out?store={STORE}&idp_session=kept")
        assert page.status_code == 200
        assert "Your sign-in at Corp SSO is still active" in page.text
        assert "http-equiv" not in page.text.lower()  # no meta refresh: the page never moves on by itself
