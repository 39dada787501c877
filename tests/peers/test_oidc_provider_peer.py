"""Prove the real OIDC provider test peer behaves as the broker's tests assume.

The test plays the relying party by hand (no broker code involved): it builds
authorization requests, logs in over plain HTTP, redeems codes and verifies
every token against the JWKS the provider publishes.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.support.oidc_provider import LoginError, OidcProvider, login_over_http
from tests.support.processes import free_port

RP_REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: login_over_http stops before it
RP_POST_LOGOUT = "http://127.0.0.1:9/signed-out"
RP_SECRET = "rp-secret-0123456789-0123456789-0123456789"
SVC_SECRET = "svc-secret-0123456789-0123456789-0123456789"
ACR_MFA = "urn:example:acr:mfa"
ACR_HWK = "urn:example:acr:hwk"
API = "urn:example:api"
SCOPES = "openid email profile groups"


def _config() -> dict[str, Any]:
    web_client = {
        "client_secret": RP_SECRET,
        "redirect_uris": [RP_REDIRECT],
        "post_logout_redirect_uris": [RP_POST_LOGOUT],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "client_secret_basic",
    }
    return {
        "port": free_port(),
        "clients": [
            {"client_id": "rp", **web_client},
            {"client_id": "rp-es256", **web_client, "id_token_signed_response_alg": "ES256"},
            {
                "client_id": "svc",
                "client_secret": SVC_SECRET,
                "redirect_uris": [],
                "grant_types": ["client_credentials"],
                "response_types": [],
                "token_endpoint_auth_method": "client_secret_basic",
            },
        ],
        "accounts": {
            "alice": {
                "password": "alice-pw",
                "claims": {
                    "sub": "u-alice",
                    "email": "alice@example.test",
                    "email_verified": True,
                    "name": "Alice Example",
                    "groups": ["admins", "developers"],
                    "amr": ["pwd", "mfa"],
                    "acr": ACR_MFA,
                },
                "step_up": {"acr": ACR_HWK, "amr": ["hwk"]},
            },
            "bob": {
                "password": "bob-pw",
                "claims": {"email": "bob@example.test", "name": "Bob", "groups": [], "amr": ["pwd"]},
            },
        },
        "resource_servers": {API: {"scope": "read write"}},
    }


@pytest.fixture(scope="module")
def op() -> Iterator[OidcProvider]:
    with OidcProvider() as provider:
        provider.start(_config())
        yield provider


@pytest.fixture(scope="module")
def metadata(op: OidcProvider) -> dict[str, Any]:
    return op.metadata()


@pytest.fixture(scope="module")
def jwks(metadata: dict[str, Any]) -> KeySet:
    return KeySet.import_key_set(httpx.get(metadata["jwks_uri"]).json())


@pytest.fixture
def browser() -> Iterator[httpx.Client]:
    """A fresh cookie jar per test, i.e. a fresh browser with no IdP session."""
    with httpx.Client(timeout=10) as client:
        yield client


class AuthRequest:
    """One authorization request's RP-side state (state, nonce, PKCE verifier)."""

    def __init__(self, metadata: dict[str, Any], client_id: str = "rp", **extra: str) -> None:
        self.client_id = client_id
        self.state = secrets.token_urlsafe(16)
        self.nonce = secrets.token_urlsafe(16)
        self.verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(self.verifier.encode()).digest()).rstrip(b"=")
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": RP_REDIRECT,
            "scope": SCOPES,
            "state": self.state,
            "nonce": self.nonce,
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            **extra,
        }
        self.url = f"{metadata['authorization_endpoint']}?{urlencode(params)}"


def _callback_params(resp: httpx.Response) -> dict[str, str]:
    query = parse_qs(urlsplit(resp.headers["location"]).query)
    return {k: v[0] for k, v in query.items()}


def _redeem(metadata: dict[str, Any], req: AuthRequest, code: str) -> dict[str, Any]:
    resp = httpx.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": RP_REDIRECT,
            "code_verifier": req.verifier,
        },
        auth=(req.client_id, RP_SECRET),  # client_secret_basic
    )
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def _verify(token: str, jwks: KeySet, issuer: str, audience: str, alg: str = "RS256") -> jwt.Token:
    decoded = jwt.decode(token, jwks, algorithms=[alg])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": issuer},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
        sub={"essential": True},
    ).validate(decoded.claims)
    return decoded


def _sign_in(
    op: OidcProvider,
    metadata: dict[str, Any],
    browser: httpx.Client,
    username: str,
    password: str,
    **extra: str,
) -> tuple[AuthRequest, dict[str, str], dict[str, Any]]:
    req = AuthRequest(metadata, **extra)
    callback = _callback_params(login_over_http(browser, req.url, username, password))
    assert "error" not in callback, callback
    assert callback["state"] == req.state
    return req, callback, _redeem(metadata, req, callback["code"])


def test_discovery(op: OidcProvider, metadata: dict[str, Any]) -> None:
    assert metadata["issuer"] == op.issuer == f"http://127.0.0.1:{op.port}"
    assert metadata["authorization_response_iss_parameter_supported"] is True
    assert metadata["code_challenge_methods_supported"] == ["S256"]
    assert metadata["end_session_endpoint"].startswith(op.issuer)
    assert "client_credentials" in metadata["grant_types_supported"]
    assert {"RS256", "ES256"} <= set(metadata["id_token_signing_alg_values_supported"])
    assert {ACR_MFA, ACR_HWK} <= set(metadata["acr_values_supported"])


def test_code_flow_with_pkce(op: OidcProvider, metadata: dict[str, Any], jwks: KeySet, browser: httpx.Client) -> None:
    req, callback, tokens = _sign_in(op, metadata, browser, "alice", "alice-pw")
    assert callback["iss"] == op.issuer  # RFC 9207

    id_token = _verify(tokens["id_token"], jwks, op.issuer, "rp")
    claims = id_token.claims
    assert id_token.header["alg"] == "RS256"
    assert claims["sub"] == "u-alice"
    assert claims["nonce"] == req.nonce
    assert claims["email"] == "alice@example.test"
    assert claims["name"] == "Alice Example"
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["admins", "developers"]
    assert claims["amr"] == ["pwd", "mfa"]
    assert claims["acr"] == ACR_MFA
    assert "auth_time" in claims

    userinfo = httpx.get(metadata["userinfo_endpoint"], headers={"Authorization": f"Bearer {tokens['access_token']}"})
    assert userinfo.status_code == 200, userinfo.text
    assert userinfo.json()["groups"] == ["admins", "developers"]
    assert userinfo.json()["email"] == "alice@example.test"

    # The code is single-use.
    replay = httpx.post(
        metadata["token_endpoint"],
        data={
            "grant_type": "authorization_code",
            "code": callback["code"],
            "redirect_uri": RP_REDIRECT,
            "code_verifier": req.verifier,
        },
        auth=("rp", RP_SECRET),
    )
    assert replay.status_code == 400
    assert replay.json()["error"] == "invalid_grant"


def test_account_without_acr_gets_plain_amr(
    op: OidcProvider, metadata: dict[str, Any], jwks: KeySet, browser: httpx.Client
) -> None:
    _, _, tokens = _sign_in(op, metadata, browser, "bob", "bob-pw")
    claims = _verify(tokens["id_token"], jwks, op.issuer, "rp").claims
    assert claims["sub"] == "bob"  # sub defaults to the username
    assert claims["amr"] == ["pwd"]
    assert "acr" not in claims
    assert claims["groups"] == []


def test_es256_client(op: OidcProvider, metadata: dict[str, Any], jwks: KeySet, browser: httpx.Client) -> None:
    _, _, tokens = _sign_in(op, metadata, browser, "alice", "alice-pw", client_id="rp-es256")
    id_token = _verify(tokens["id_token"], jwks, op.issuer, "rp-es256", alg="ES256")
    assert id_token.header["alg"] == "ES256"


def test_login_page_is_plain_html(metadata: dict[str, Any], browser: httpx.Client) -> None:
    resp = browser.get(AuthRequest(metadata).url, follow_redirects=True)
    assert resp.status_code == 200
    html = resp.text
    assert "<script" not in html
    assert '<label for="login">' in html and '<label for="password">' in html
    assert 'name="login"' in html and 'name="password"' in html
    assert '<button type="submit">Sign in</button>' in html


def test_wrong_password_is_rejected(metadata: dict[str, Any], browser: httpx.Client) -> None:
    with pytest.raises(LoginError) as excinfo:
        login_over_http(browser, AuthRequest(metadata).url, "alice", "wrong")
    assert excinfo.value.response.status_code == 401
    assert "Invalid username or password" in excinfo.value.response.text


@pytest.mark.parametrize(
    "pkce",
    [{}, {"code_challenge": "x" * 43, "code_challenge_method": "plain"}],
    ids=["missing", "plain"],
)
def test_pkce_s256_is_required(metadata: dict[str, Any], browser: httpx.Client, pkce: dict[str, str]) -> None:
    params = {
        "response_type": "code",
        "client_id": "rp",
        "redirect_uri": RP_REDIRECT,
        "scope": "openid",
        "state": "s",
        **pkce,
    }
    resp = browser.get(f"{metadata['authorization_endpoint']}?{urlencode(params)}")
    callback = _callback_params(resp)
    assert callback["error"] == "invalid_request", callback
    assert callback["state"] == "s"


def test_sso_session_skips_login_form(op: OidcProvider, metadata: dict[str, Any], browser: httpx.Client) -> None:
    _sign_in(op, metadata, browser, "alice", "alice-pw")
    # A wrong password would raise if the form were shown again.
    _, callback, _ = _sign_in(op, metadata, browser, "alice", "not-used")
    assert callback["iss"] == op.issuer


def test_step_up_acr(op: OidcProvider, metadata: dict[str, Any], jwks: KeySet, browser: httpx.Client) -> None:
    _, _, tokens = _sign_in(op, metadata, browser, "alice", "alice-pw")
    assert _verify(tokens["id_token"], jwks, op.issuer, "rp").claims["acr"] == ACR_MFA

    # Same browser session, but the RP now demands the stronger context: the
    # provider must show the login form again (a wrong password proves it) ...
    with pytest.raises(LoginError):
        login_over_http(browser, AuthRequest(metadata, acr_values=ACR_HWK).url, "alice", "wrong")

    # ... and a successful re-authentication yields the step-up acr and amr.
    req, _, tokens = _sign_in(op, metadata, browser, "alice", "alice-pw", acr_values=ACR_HWK)
    claims = _verify(tokens["id_token"], jwks, op.issuer, "rp").claims
    assert claims["acr"] == ACR_HWK
    assert claims["amr"] == ["pwd", "mfa", "hwk"]
    assert claims["nonce"] == req.nonce


def test_client_credentials_jwt_access_token(op: OidcProvider, metadata: dict[str, Any], jwks: KeySet) -> None:
    resp = httpx.post(
        metadata["token_endpoint"],
        data={"grant_type": "client_credentials", "resource": API, "scope": "read"},
        auth=("svc", SVC_SECRET),
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read"

    token = jwt.decode(body["access_token"], jwks, algorithms=["RS256"])
    assert token.header["typ"] == "at+jwt"  # RFC 9068
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": op.issuer},
        aud={"essential": True, "value": API},
        exp={"essential": True},
        client_id={"essential": True, "value": "svc"},
    ).validate(token.claims)
    assert token.claims["scope"] == "read"


def test_rp_initiated_logout(op: OidcProvider, metadata: dict[str, Any], browser: httpx.Client) -> None:
    _, _, tokens = _sign_in(op, metadata, browser, "alice", "alice-pw")
    params = {
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": RP_POST_LOGOUT,
        "state": "bye",
    }
    confirm = browser.get(f"{metadata['end_session_endpoint']}?{urlencode(params)}")
    assert confirm.status_code == 200
    assert "<script" not in confirm.text
    xsrf = confirm.text.split('name="xsrf" value="', 1)[1].split('"', 1)[0]
    done = browser.post(f"{metadata['end_session_endpoint']}/confirm", data={"xsrf": xsrf, "logout": "yes"})
    assert done.status_code in (302, 303)
    assert done.headers["location"] == f"{RP_POST_LOGOUT}?state=bye"

    # The session is gone: the login form is shown again.
    with pytest.raises(LoginError):
        login_over_http(browser, AuthRequest(metadata).url, "alice", "wrong")


def test_login_in_headless_chromium(op: OidcProvider, metadata: dict[str, Any], chromium: Any) -> None:
    """The login page works in a real browser, with JavaScript disabled to prove it needs none."""
    req = AuthRequest(metadata)
    callbacks: list[str] = []
    context = chromium.new_context(java_script_enabled=False)
    try:
        page = context.new_page()

        # Stand in for the RP's callback and record what the provider sent it.
        def rp_callback(route: Any) -> None:
            callbacks.append(route.request.url)
            route.fulfill(status=200, body="ok")

        page.route(f"{RP_REDIRECT}*", rp_callback)
        page.goto(req.url)
        page.get_by_label("Username").fill("alice")
        page.get_by_label("Password").fill("alice-pw")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{RP_REDIRECT}*")
    finally:
        context.close()

    assert len(callbacks) == 1
    params = {k: v[0] for k, v in parse_qs(urlsplit(callbacks[0]).query).items()}
    assert params["state"] == req.state
    assert params["iss"] == op.issuer
    assert _redeem(metadata, req, params["code"])["id_token"]
