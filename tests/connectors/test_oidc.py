"""The OIDC connector on its own: configuration, MFA mapping, and the protocol against a real oidc-provider.

The flow tests in ``tests/web/test_oidc.py`` cover the hostile cases through the running broker; these
pin the connector's contracts (discovery, client authentication, userinfo, key rotation) directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from joserfc.jwk import RSAKey

from broker.connectors.oidc import JWKS_REFRESH_INTERVAL, OidcConnector, OidcLogin, mfa_level
from broker.errors import AuthenticationFailed, ConfigError, ServiceUnavailable
from broker.identity import MfaLevel
from broker.settings import MfaMapping, OidcStoreConfig, load_settings
from tests.conftest import SECRET
from tests.support.oidc_flow import ACCOUNTS, CLIENT_SECRET, query, store_config
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.oidc_relay import OidcRelay, resign

REDIRECT = "http://127.0.0.1:9/cb"  # never contacted: login_over_http stops before following it
SIGNED_OUT = "http://127.0.0.1:9/signed-out"
CLIENT_KEY = RSAKey.generate_key(2048, parameters={"kid": "broker-client-key"})


def _client(client_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "client_id": client_id,
        "redirect_uris": [REDIRECT],
        "post_logout_redirect_uris": [SIGNED_OUT],
        "grant_types": ["authorization_code"],
        "response_types": ["code"],
        **extra,
    }


def _provider_config(**extra: Any) -> dict[str, Any]:
    return {
        "clients": [
            _client("broker", client_secret=CLIENT_SECRET, token_endpoint_auth_method="client_secret_basic"),
            _client("broker-post", client_secret=CLIENT_SECRET, token_endpoint_auth_method="client_secret_post"),
            _client(
                "broker-jwt",
                token_endpoint_auth_method="private_key_jwt",
                jwks={"keys": [CLIENT_KEY.as_dict(private=False)]},
            ),
        ],
        "accounts": ACCOUNTS,
        **extra,
    }


@pytest.fixture(scope="module")
def op() -> Iterator[OidcProvider]:
    with OidcProvider() as provider:
        provider.start(_provider_config())
        yield provider


@pytest.fixture(scope="module")
def relay() -> Iterator[OidcRelay]:
    relay = OidcRelay()
    with OidcProvider() as provider:
        provider.start({**_provider_config(), "issuer": relay.url})
        relay.start(f"http://127.0.0.1:{provider.port}")
        try:
            yield relay
        finally:
            relay.stop()


def connector(issuer: str, *, monotonic: Any = None, **overrides: Any) -> OidcConnector:
    config = OidcStoreConfig(**store_config("corp", issuer, **overrides))
    extra = {"monotonic": monotonic} if monotonic else {}
    return OidcConnector(config, redirect_uri=REDIRECT, post_logout_redirect_uri=SIGNED_OUT, **extra)


def login(rp: OidcConnector, user: str, **request: Any) -> OidcLogin:
    """Authorization request, the provider's real login form, then the connector's completion."""
    auth = rp.authorization_request(**request)
    with httpx.Client(timeout=20) as browser:
        answer = login_over_http(browser, auth.url, user, ACCOUNTS[user]["password"])
    return rp.complete(query(answer.headers["location"]), auth.stored())


# ---------------------------------------------------------------------------- configuration


def test_config_reports_every_problem_at_once() -> None:
    bad = {
        "type": "oidc",
        "name": "corp",
        "issuer": "http://idp.example.com",
        "client_id": "broker",
        "algorithms": ["RS256", "HS256", "none"],
        "scopes": ["email"],
    }
    with pytest.raises(ConfigError) as excinfo:
        load_settings(None, secret_key=SECRET, identity_stores=[bad])
    text = str(excinfo.value)
    assert "https://" in text and "HS256" in text and "none" in text


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"scopes": ["email"]}, "scopes must include openid"),
        ({"client_secret": None}, "needs client_secret"),
        ({"client_auth": "private_key_jwt", "client_secret": None}, "needs private_key"),
    ],
)
def test_config_cross_checks(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(
            None, secret_key=SECRET, identity_stores=[store_config("corp", "https://idp.example", **overrides)]
        )


def test_client_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORP_OIDC_SECRET", "from-the-environment")
    settings = load_settings(
        None,
        secret_key=SECRET,
        public_url="https://broker.example",
        identity_stores=[store_config("corp", "https://idp.example", client_secret="env:CORP_OIDC_SECRET")],
    )
    store = settings.store("corp")
    assert isinstance(store, OidcStoreConfig) and store.client_secret is not None
    assert store.client_secret.get_secret_value() == "from-the-environment"
    assert "from-the-environment" not in repr(settings)


# ---------------------------------------------------------------------------- MFA mapping

AMR = MfaMapping(mfa=["mfa", "otp"], phishing_resistant=["hwk"])
ACR = MfaMapping(mfa=["urn:acr:mfa"], phishing_resistant=["urn:acr:phr"])


@pytest.mark.parametrize(
    ("amr", "acr", "level"),
    [
        ([], None, MfaLevel.NONE),
        (["pwd"], None, MfaLevel.NONE),
        (["pwd", "otp"], None, MfaLevel.MFA),
        (["pwd", "mfa", "hwk"], None, MfaLevel.PHISHING_RESISTANT),
        (["pwd"], "urn:acr:mfa", MfaLevel.MFA),
        (["pwd"], "urn:acr:phr", MfaLevel.PHISHING_RESISTANT),
        (["mfa"], "urn:acr:unknown", MfaLevel.MFA),
        (["MFA", "Hwk"], "URN:ACR:PHR", MfaLevel.NONE),  # exact comparison, no case folding
    ],
)
def test_mfa_level(amr: list[str], acr: str | None, level: MfaLevel) -> None:
    assert mfa_level(amr, acr, amr_map=AMR, acr_map=ACR) == level


# ---------------------------------------------------------------------------- against the real provider


def test_code_flow_builds_one_identity(op: OidcProvider) -> None:
    result = login(connector(op.issuer), "alice")
    identity = result.identity
    assert (identity.subject, identity.issuer, identity.store) == ("u-alice", op.issuer, "corp")
    assert (identity.username, identity.email) == ("alice", "alice@example.test")
    assert identity.groups == {"engineering", "admins"}
    assert identity.mfa.level == MfaLevel.MFA and identity.mfa.methods == ("pwd", "mfa")
    assert result.acr == "urn:example:acr:mfa" and identity.attributes["acr"] == result.acr


def test_authorization_request_uses_pkce_s256_and_fresh_secrets(op: OidcProvider) -> None:
    rp = connector(op.issuer)
    first, second = rp.authorization_request(), rp.authorization_request()
    params = query(first.url)
    assert params["code_challenge_method"] == "S256" and params["code_challenge"] != first.code_verifier
    assert params["nonce"] == first.nonce and params["state"] == first.state
    assert params["redirect_uri"] == REDIRECT and params["scope"] == "openid email profile groups"
    assert {first.state, first.nonce, first.code_verifier}.isdisjoint({second.state, second.nonce})


def test_discovery_issuer_must_match_exactly(op: OidcProvider) -> None:
    rp = connector(op.issuer + "/")
    with pytest.raises(ServiceUnavailable) as excinfo:
        rp.authorization_request()
    assert excinfo.value.reason == "oidc.discovery_issuer_mismatch"


def test_unreachable_provider_is_a_clear_503() -> None:
    with pytest.raises(ServiceUnavailable) as excinfo:
        connector("http://127.0.0.1:9").authorization_request()
    assert excinfo.value.status == 503 and excinfo.value.reason == "oidc.discovery_unavailable"


def test_client_secret_post(op: OidcProvider) -> None:
    rp = connector(op.issuer, client_id="broker-post", client_auth="client_secret_post")
    assert login(rp, "bob").identity.subject == "u-bob"


def test_private_key_jwt(op: OidcProvider) -> None:
    rp = connector(
        op.issuer,
        client_id="broker-jwt",
        client_auth="private_key_jwt",
        client_secret=None,
        private_key=CLIENT_KEY.as_pem(private=True).decode(),
        private_key_id=CLIENT_KEY.kid,
    )
    assert login(rp, "alice").identity.subject == "u-alice"


def test_wrong_client_secret_is_refused(op: OidcProvider) -> None:
    with pytest.raises(AuthenticationFailed) as excinfo:
        login(connector(op.issuer, client_secret="not-the-secret"), "alice")
    assert excinfo.value.reason == "oidc.token_error"


def test_userinfo_fills_claims_and_checks_sub(op: OidcProvider) -> None:
    rp = connector(op.issuer, userinfo=True, scopes=["openid", "groups"], email_claim="email")
    identity = login(rp, "alice").identity
    assert identity.subject == "u-alice" and identity.groups == {"engineering", "admins"}


def test_step_up_request_gets_fresh_stronger_login(op: OidcProvider) -> None:
    rp = connector(op.issuer)
    result = login(rp, "alice", acr_values=rp.step_up_acr_values(MfaLevel.PHISHING_RESISTANT), max_age=0)
    assert result.identity.mfa.level == MfaLevel.PHISHING_RESISTANT
    assert result.identity.mfa.methods == ("pwd", "mfa", "hwk")


def test_end_session_url(op: OidcProvider) -> None:
    url = connector(op.issuer).end_session_url()
    assert url is not None and url.startswith(f"{op.issuer}/session/end?")
    assert query(url) == {"client_id": "broker", "post_logout_redirect_uri": SIGNED_OUT}
    assert connector(op.issuer, rp_logout=False).end_session_url() is None


def test_key_rotation_refreshes_jwks_once_rate_limited(relay: OidcRelay) -> None:
    """An unknown kid refreshes the JWKS, but at most once per interval: forged kids cannot flood the IdP."""
    now = [1000.0]
    rp = connector(relay.url, monotonic=lambda: now[0])
    relay.forge = resign
    fetches = relay.requests["/jwks"]
    assert login(rp, "alice").identity.subject == "u-alice"
    assert relay.requests["/jwks"] == fetches + 1

    # The IdP rotates its key. Right after a fetch, an unknown kid does not trigger another one ...
    old_key = relay.key
    relay.key = RSAKey.generate_key(2048, parameters={"kid": "relay-key-2", "use": "sig", "alg": "RS256"})
    try:
        with pytest.raises(AuthenticationFailed) as excinfo:
            login(rp, "alice")
        assert excinfo.value.reason == "oidc.kid_unknown"
        assert relay.requests["/jwks"] == fetches + 1
        # ... once the interval has passed, exactly one refresh picks up the new key.
        now[0] += JWKS_REFRESH_INTERVAL
        assert login(rp, "alice").identity.subject == "u-alice"
        assert relay.requests["/jwks"] == fetches + 2
        # Known keys are served from the cache.
        assert login(rp, "alice").identity.subject == "u-alice"
        assert relay.requests["/jwks"] == fetches + 2
    finally:
        relay.key = old_key
