"""OIDC sign-in at HTTP level against real peers: oidc-provider, the broker on a real socket, moto's STS and
the console federation stand-in.

Every hostile case (THREATS.md, "OIDC and JWT" and "Sessions") checks the same outcome: a clear 4xx, no
credentials issued (no issuance row, no sign-in token requested from the federation endpoint), and exactly
one audit event carrying the refusal's reason code.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from sqlalchemy import text

from broker.store.db import Database
from tests.support.oidc_flow import (
    ACCOUNTS,
    Peers,
    Running,
    csrf_of,
    idp_callback,
    query,
    running_broker,
    sign_in,
    start_login,
    start_peers,
)
from tests.support.oidc_provider import LoginError, login_over_http
from tests.support.oidc_relay import OidcRelay, b64, resign

HTML = {"accept": "text/html"}


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    with start_peers() as started:
        yield started


@pytest.fixture
def broker(peers: Peers, make_config: Any, sts_endpoint: str) -> Iterator[Running]:
    peers.relay.forge = resign
    with running_broker(peers, make_config(identity_stores=peers.stores()), sts_endpoint) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=20) as client:
        yield client


def roles_on(page: str) -> set[str]:
    return set(re.findall(r'data-role="([^"]+)"', page))


def assert_refused(broker: Running, before: int, reason: str, *, event: str = "login") -> None:
    """Exactly one new audit event, the refusal with its reason; no credentials left the broker."""
    events = broker.audit(after=before)
    assert [(e.event, e.outcome, e.reason) for e in events] == [(event, "denied", reason)]
    assert broker.issuances() == []
    assert broker.standin.token_requests == 0


# ---------------------------------------------------------------------------- the everyday flow


def test_sign_in_see_roles_open_console(broker: Running, browser: httpx.Client) -> None:
    resp = sign_in(browser, broker.url, "corp", "alice")
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    assert "httponly" in resp.headers["set-cookie"].lower() and "samesite=lax" in resp.headers["set-cookie"].lower()

    portal = browser.get(f"{broker.url}/", headers=HTML)
    assert portal.status_code == 200
    assert roles_on(portal.text) == {"readonly", "admin"}
    assert "Sign-in strength: <strong>mfa</strong>" in portal.text

    before = broker.last_seq()
    opened = browser.post(
        f"{broker.url}/console", data={"role": "readonly", "duration": "1800", "csrf": csrf_of(portal.text)}
    )
    assert opened.status_code == 303
    assert opened.headers["location"].startswith(broker.standin.url)
    landing = browser.get(opened.headers["location"])
    assert landing.status_code == 200 and "AWS Management Console" in landing.text
    assert len(broker.standin.logins) == 1
    assert ":assumed-role/ReadOnly/" in broker.standin.logins[0].arn
    assert broker.standin.logins[0].session_duration == "1800"

    [issuance] = broker.issuances()
    assert issuance.channel == "console" and issuance.granted_duration_seconds == 1800
    [event] = broker.audit(after=before)
    assert (event.event, event.outcome, event.reason) == ("credentials", "ok", "issued")
    assert event.detail["access_key_id"] == issuance.access_key_id
    assert event.detail["source_identity"] == issuance.source_identity == "alice@example.test"
    login = next(e for e in broker.audit() if e.event == "login")
    assert (login.outcome, login.store, login.principal) == ("ok", "corp", "alice@example.test")
    assert login.detail["mfa"] == "mfa" and login.detail["acr"] == "urn:example:acr:mfa"


def test_step_up_to_phishing_resistant_then_console(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    sign_in(browser, broker.url, "corp", "alice")
    portal = browser.get(f"{broker.url}/", headers=HTML)
    before = broker.last_seq()
    step = browser.post(f"{broker.url}/console", data={"role": "admin", "csrf": csrf_of(portal.text)})
    assert step.status_code == 303
    authorize = step.headers["location"]
    assert authorize.startswith(peers.corp.issuer)
    assert query(authorize)["acr_values"] == "urn:example:acr:hwk" and query(authorize)["max_age"] == "0"

    # The IdP must show its login form again (max_age=0): a wrong password proves it is not skipped.
    with pytest.raises(LoginError):
        login_over_http(browser, authorize, "alice", "wrong")
    callback = idp_callback(browser, authorize, "alice")
    done = browser.get(callback)
    assert done.status_code == 303 and done.headers["location"].startswith(broker.standin.url)
    browser.get(done.headers["location"])
    assert ":assumed-role/Admin/" in broker.standin.logins[0].arn
    events = [(e.event, e.outcome, e.reason) for e in broker.audit(after=before)]
    assert events == [
        ("step_up", "started", "mfa_step_up"),
        ("login", "ok", "authenticated"),
        ("credentials", "ok", "issued"),
    ]
    [issuance] = broker.issuances()
    assert issuance.role_name == "admin"


def test_step_up_the_idp_cannot_deliver(broker: Running, browser: httpx.Client) -> None:
    sign_in(browser, broker.url, "corp", "dave")
    portal = browser.get(f"{broker.url}/", headers=HTML)
    step = browser.post(f"{broker.url}/console", data={"role": "admin", "csrf": csrf_of(portal.text)})
    callback = idp_callback(browser, step.headers["location"], "dave")
    before = broker.last_seq()
    page = browser.get(callback, headers=HTML)
    assert page.status_code == 403
    assert "did not confirm a phishing-resistant sign-in" in page.text and "Traceback" not in page.text
    events = [(e.event, e.outcome, e.reason) for e in broker.audit(after=before)]
    assert events == [("login", "ok", "authenticated"), ("credentials", "denied", "oidc.step_up_not_met")]
    assert broker.issuances() == [] and broker.standin.token_requests == 0


def test_rp_initiated_logout(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    sign_in(browser, broker.url, "corp", "alice")
    portal = browser.get(f"{broker.url}/", headers=HTML)
    out = browser.post(f"{broker.url}/logout", data={"csrf": csrf_of(portal.text)})
    assert out.status_code == 303
    location = out.headers["location"]
    assert location.startswith(f"{peers.corp.issuer}/session/end?")
    assert query(location) == {"client_id": "broker", "post_logout_redirect_uri": f"{broker.url}/signed-out"}
    assert browser.get(f"{broker.url}/").status_code == 401
    assert broker.session_count() == 0
    # The provider accepts the request (registered post-logout URI) and asks the user to confirm.
    assert browser.get(location).status_code == 200


# ---------------------------------------------------------------------------- policy refusals


def test_role_the_user_may_not_use(broker: Running, browser: httpx.Client) -> None:
    sign_in(browser, broker.url, "corp", "carol")
    portal = browser.get(f"{broker.url}/", headers=HTML)
    assert roles_on(portal.text) == set() and "No role is granted to you" in portal.text
    before = broker.last_seq()
    resp = browser.post(f"{broker.url}/console", data={"role": "readonly", "csrf": csrf_of(portal.text)}, headers=HTML)
    assert resp.status_code == 403 and "You are not allowed to use this role." in resp.text
    assert_refused(broker, before, "role_not_granted", event="credentials")


def test_mfa_below_the_roles_level(broker: Running, browser: httpx.Client) -> None:
    sign_in(browser, broker.url, "corp", "bob")
    portal = browser.get(f"{broker.url}/", headers=HTML)
    assert roles_on(portal.text) == {"readonly"} and "This role needs mfa sign-in" in portal.text
    # One next step (add a factor at the broker), not also "sign out and sign in again".
    assert "add a security key or authenticator app" in portal.text and "Sign out and sign in again" not in portal.text
    before = broker.last_seq()
    resp = browser.post(f"{broker.url}/console", data={"role": "readonly", "csrf": csrf_of(portal.text)})
    assert resp.status_code == 403 and resp.json()["error"] == "mfa_required"
    assert_refused(broker, before, "mfa_insufficient", event="credentials")


def test_a_disabled_person_is_refused_at_once(broker: Running, browser: httpx.Client) -> None:
    """Refused inside the sign-in's transaction, audited once it rolled back: 403 at once, never a 503."""
    sign_in(browser, broker.url, "corp", "alice")
    db = Database(broker.db_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE principals SET disabled = :yes"), {"yes": True})
    db.dispose()
    before = broker.last_seq()
    with httpx.Client(timeout=20) as other:
        started = time.monotonic()
        resp = sign_in(other, broker.url, "corp", "alice")
        assert time.monotonic() - started < 8
    assert resp.status_code == 403 and resp.json()["error"] == "access_denied"
    assert_refused(broker, before, "principal_disabled")


def test_signing_in_again_ends_the_earlier_session(broker: Running, browser: httpx.Client) -> None:
    sign_in(browser, broker.url, "corp", "alice")
    earlier = browser.cookies.get("broker_session")
    assert earlier and broker.session_count() == 1
    sign_in(browser, broker.url, "corp", "bob")
    assert browser.cookies.get("broker_session") != earlier and broker.session_count() == 1


# ---------------------------------------------------------------------------- state, PKCE, mix-up


def test_replayed_state(broker: Running, browser: httpx.Client) -> None:
    callback = idp_callback(browser, start_login(browser, broker.url, "corp"), "alice")
    assert browser.get(callback).status_code == 303
    before, sessions = broker.last_seq(), broker.session_count()
    again = browser.get(callback)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert_refused(broker, before, "oidc.state_unknown")
    assert broker.session_count() == sessions


def test_missing_state(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    callback = idp_callback(browser, start_login(browser, broker.url, "corp"), "alice")
    params = query(callback)
    del params["state"]
    before = broker.last_seq()
    resp = browser.get(f"{broker.url}/oidc/corp/callback", params=params)
    assert resp.status_code == 400
    assert_refused(broker, before, "oidc.state_missing")


def test_repeated_parameters(broker: Running, browser: httpx.Client) -> None:
    callback = idp_callback(browser, start_login(browser, broker.url, "corp"), "alice")
    before = broker.last_seq()
    resp = browser.get(callback + "&state=second")
    assert resp.status_code == 400
    assert_refused(broker, before, "oidc.params_invalid")


def test_callback_delivered_to_another_browser(broker: Running, browser: httpx.Client) -> None:
    """Login CSRF / session swap: a complete callback (code + state) replayed in the attacker's browser."""
    with httpx.Client(timeout=20) as victim:
        callback = idp_callback(victim, start_login(victim, broker.url, "corp"), "alice")
    start_login(browser, broker.url, "corp")  # the attacker has a browser cookie of their own
    before = broker.last_seq()
    resp = browser.get(callback)
    assert resp.status_code == 401
    assert_refused(broker, before, "oidc.browser_mismatch")


def test_code_substitution_across_sessions(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    """A victim's code injected into the attacker's own sign-in: the PKCE verifier does not match it."""
    with httpx.Client(timeout=20) as victim:
        stolen = query(idp_callback(victim, start_login(victim, broker.url, "corp"), "alice"))
    own = query(start_login(browser, broker.url, "corp"))
    before = broker.last_seq()
    resp = browser.get(
        f"{broker.url}/oidc/corp/callback",
        params={"code": stolen["code"], "state": own["state"], "iss": peers.corp.issuer},
    )
    assert resp.status_code == 401
    assert_refused(broker, before, "oidc.token_error")


def test_mix_up_between_two_providers(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    """RFC 9207: an answer from `other` presented for a sign-in started at `corp` is refused by its iss."""
    corp_state = query(start_login(browser, broker.url, "corp"))["state"]
    other = query(idp_callback(browser, start_login(browser, broker.url, "other"), "alice"))
    assert other["iss"] == peers.other.issuer
    before = broker.last_seq()
    resp = browser.get(
        f"{broker.url}/oidc/corp/callback", params={"code": other["code"], "state": corp_state, "iss": other["iss"]}
    )
    assert resp.status_code == 401
    assert_refused(broker, before, "oidc.iss_parameter_mismatch")


def test_iss_parameter_missing_when_advertised(broker: Running, browser: httpx.Client) -> None:
    params = query(idp_callback(browser, start_login(browser, broker.url, "corp"), "alice"))
    del params["iss"]
    before = broker.last_seq()
    resp = browser.get(f"{broker.url}/oidc/corp/callback", params=params)
    assert resp.status_code == 401
    assert_refused(broker, before, "oidc.iss_parameter_missing")


def test_state_for_one_store_at_another_stores_callback(broker: Running, browser: httpx.Client) -> None:
    params = query(idp_callback(browser, start_login(browser, broker.url, "other"), "alice"))
    before = broker.last_seq()
    resp = browser.get(f"{broker.url}/oidc/corp/callback", params=params)
    assert resp.status_code == 400
    assert_refused(broker, before, "oidc.state_store_mismatch")


def test_idp_error_response(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    state = query(start_login(browser, broker.url, "corp"))["state"]
    before = broker.last_seq()
    resp = browser.get(
        f"{broker.url}/oidc/corp/callback",
        params={"error": "access_denied", "state": state, "iss": peers.corp.issuer},
        headers=HTML,
    )
    assert resp.status_code == 401 and "The sign-in was cancelled." in resp.text
    assert_refused(broker, before, "oidc.idp_error.access_denied")


# ---------------------------------------------------------------------------- sessions and redirects


@pytest.mark.parametrize(
    "next_path", ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", "/%2F%2Fevil"]
)
def test_open_redirect_is_neutralised(broker: Running, browser: httpx.Client, next_path: str) -> None:
    resp = sign_in(browser, broker.url, "corp", "alice", next_path=next_path)
    assert resp.status_code == 303 and resp.headers["location"] == "/"


def test_allowed_return_path_is_kept(broker: Running, browser: httpx.Client) -> None:
    resp = sign_in(browser, broker.url, "corp", "alice", next_path="/device")
    assert resp.headers["location"] == "/device"


def test_session_fixation(broker: Running, browser: httpx.Client) -> None:
    fixated = "attacker-chosen-session-id-0123456789"
    browser.cookies.set("broker_session", fixated)
    first = sign_in(browser, broker.url, "corp", "alice").cookies["broker_session"]
    assert first and first != fixated
    # Signing in again (the IdP's single sign-on answers at once) rotates the id and ends the old session.
    browser.cookies.clear()
    browser.cookies.set("broker_session", first)
    second = sign_in(browser, broker.url, "corp", "alice").cookies["broker_session"]
    assert second != first
    with httpx.Client(timeout=10) as other:
        assert other.get(f"{broker.url}/", cookies={"broker_session": first}).status_code == 401
        assert other.get(f"{broker.url}/", cookies={"broker_session": second}).status_code == 200
    assert broker.session_count() == 1


# ---------------------------------------------------------------------------- forged ID tokens


def _alg_none(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}))}.{b64(json.dumps(claims))}."


def _key_confusion(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """HS256 "signed" with the IdP's public RSA key as the HMAC secret (the classic confusion attack)."""
    secret = relay.key.as_pem(private=False)
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'kid': relay.key.kid}))}.{b64(json.dumps(claims))}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"


def _foreign_key(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
    other = RSAKey.generate_key(2048, parameters={"kid": relay.key.kid})
    return jwt.encode({"alg": "RS256", "kid": relay.key.kid}, claims, other, algorithms=["RS256"])


def _claims(**changes: Any) -> Any:
    def forge(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
        now = int(time.time())
        resolved = {k: (v(now) if callable(v) else v) for k, v in changes.items()}
        return resign(relay, header, {k: v for k, v in {**claims, **resolved}.items() if v is not None})

    return forge


def _header(**extra: Any) -> Any:
    def forge(relay: OidcRelay, header: dict[str, Any], claims: dict[str, Any]) -> str:
        return resign(relay, {**header, **extra}, claims)

    return forge


FORGERIES = [
    ("alg_none", _alg_none, "oidc.alg_not_allowed"),
    ("key_confusion_hs256", _key_confusion, "oidc.alg_not_allowed"),
    ("foreign_signature", _foreign_key, "oidc.signature_invalid"),
    ("wrong_iss", _claims(iss="http://127.0.0.1:9/evil"), "oidc.iss_mismatch"),
    ("wrong_aud", _claims(aud="someone-else"), "oidc.aud_mismatch"),
    ("extra_aud_without_azp", _claims(aud=["broker", "someone-else"], azp=None), "oidc.azp_mismatch"),
    ("wrong_azp", _claims(azp="someone-else"), "oidc.azp_mismatch"),
    ("wrong_nonce", _claims(nonce="not-the-nonce"), "oidc.nonce_mismatch"),
    ("no_nonce", _claims(nonce=None), "oidc.nonce_mismatch"),
    ("expired", _claims(exp=lambda now: now - 3600, iat=lambda now: now - 4000), "oidc.token_expired"),
    ("no_exp", _claims(exp=None), "oidc.exp_invalid"),
    ("issued_in_future", _claims(iat=lambda now: now + 3600), "oidc.iat_invalid"),
    ("not_yet_valid", _claims(nbf=lambda now: now + 3600), "oidc.nbf_invalid"),
    ("jku_header", _header(jku="http://127.0.0.1:9/jwks"), "oidc.key_reference_header"),
    ("jwk_header", _header(jwk={"kty": "oct", "k": "AAAA"}), "oidc.key_reference_header"),
    ("unknown_kid", _header(kid="rotated-away"), "oidc.kid_unknown"),
    ("hostile_kid", _header(kid="../../etc/passwd\n"), "oidc.kid_invalid"),
    ("oversized", _claims(pad="x" * 40000), "oidc.token_too_large"),
    ("nul_in_sub", _claims(sub="u-alice\x00admin"), "oidc.claim_invalid"),
    ("nul_in_group", _claims(groups=["engineering\x00admins"]), "oidc.claim_invalid"),
    ("groups_not_a_list", _claims(groups={"admins": True}), "oidc.claim_invalid"),
]


def test_relay_baseline_is_accepted(broker: Running, browser: httpx.Client, peers: Peers) -> None:
    """The relay's unmodified re-signing is accepted, so each forgery below fails for its mutation alone."""
    tokens = peers.relay.requests["/token"]
    resp = sign_in(browser, broker.url, "forge", "alice")
    assert resp.status_code == 303 and resp.headers["location"] == "/"
    assert peers.relay.requests["/token"] == tokens + 1


@pytest.mark.parametrize(("forge", "reason"), [f[1:] for f in FORGERIES], ids=[f[0] for f in FORGERIES])
def test_forged_id_token(broker: Running, browser: httpx.Client, peers: Peers, forge: Any, reason: str) -> None:
    peers.relay.forge = forge
    authorize = start_login(browser, broker.url, "forge")
    callback = login_over_http(browser, authorize, "alice", ACCOUNTS["alice"]["password"]).headers["location"]
    before = broker.last_seq()
    resp = browser.get(callback, headers=HTML)
    assert resp.status_code == 401, resp.text
    assert 'role="alert"' in resp.text and "Traceback" not in resp.text
    assert_refused(broker, before, reason)
    assert broker.session_count() == 0
