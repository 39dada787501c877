"""The credential helper's sign-in against a running broker: loopback + PKCE (RFC 8252), device code
(RFC 8628), refresh rotation with reuse detection, revocation (RFC 7009), and the bearer API.

Peers: the broker on a real socket (SQLite and PostgreSQL), moto's STS, the helper's own HTTP client and
loopback listener, and (for the cross-process replay) a second broker started with `broker serve`.
Every refusal: the RFC error code, no credentials, exactly one audit event with a machine reason.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
import yaml
from sqlalchemy import text

from broker.client import store
from broker.client.api import Broker, HelperError
from broker.oauth.authorization_code import s256
from broker.store.db import Database
from tests.support.audit_outage import audit_refused
from tests.support.cli_broker import PASSWORD, CliBroker, cli_broker, hidden_fields, local_store
from tests.support.portal import login_local
from tests.support.processes import broker_env, free_port, wait_for_port

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"
VERIFIER = "v" * 43 + "-verifier"


@pytest.fixture(autouse=True)
def helper_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_CLIENT_HOME", str(tmp_path / "helper"))
    monkeypatch.setenv("BROKER_CLIENT_KEYRING", "file")
    return tmp_path / "helper"


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]]) -> Iterator[CliBroker]:
    with cli_broker(make_config()) as running:
        yield running


@pytest.fixture
def web(live: CliBroker) -> Iterator[httpx.Client]:
    client = live.browser()
    yield client
    client.close()


def refusals(live: CliBroker, after: int) -> list[tuple[str, str, str]]:
    return [(e.event, e.outcome, e.reason) for e in live.audit(after)]


def token(live: CliBroker, **data: str) -> httpx.Response:
    return httpx.post(f"{live.url}/oauth2/token", data={"client_id": "broker-cli", **data}, timeout=30)


def code_for(web: httpx.Client, *, redirect_uri: str, challenge: str, state: str = "s1") -> str:
    """Drive the consent page (as a browser would) and return the code sent to the loopback URI."""
    query = {
        "response_type": "code",
        "client_id": "broker-cli",
        "redirect_uri": redirect_uri,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": state,
    }
    page = web.get("/oauth2/authorize", params=query)
    assert page.status_code == 200, page.text
    answer = web.post("/oauth2/authorize", data={**hidden_fields(page.text), "decision": "allow"})
    assert answer.status_code == 303
    location = answer.headers["location"]
    assert location.startswith(redirect_uri + "?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert params["state"] == state and params["iss"] == web.base_url.__str__().rstrip("/")
    return params["code"]


def device_login(live: CliBroker, web: httpx.Client, base: str | None = None) -> dict[str, Any]:
    grant = httpx.post(f"{base or live.url}/oauth2/device_authorization", data={"client_id": "broker-cli"}).json()
    page = web.get("/device", params={"user_code": grant["user_code"].lower().replace("-", "")})
    assert page.status_code == 200 and grant["user_code"] in page.text
    done = web.post("/device", data={**hidden_fields(page.text), "decision": "allow"})
    assert done.status_code == 200 and "Command line signed in" in done.text
    return grant


# ---------------------------------------------------------------- loopback with PKCE


def test_loopback_sign_in_from_a_fresh_browser_then_credentials(live: CliBroker, sts_endpoint: str) -> None:
    """The helper's real listener; the browser is sent to /login first and comes back to the consent page."""
    browser = httpx.Client(base_url=live.url, follow_redirects=False, timeout=30)

    def open_browser(url: str) -> bool:
        to_login = browser.get(url)
        assert to_login.status_code == 303 and to_login.headers["location"].startswith("/login?next=")
        next_path = httpx.URL(to_login.headers["location"]).params["next"]
        signed_in = login_local(
            browser, store="breakglass", username="alice", password=PASSWORD, code=live.totp(), next_path=next_path
        )
        assert signed_in.headers["location"] == next_path  # back to the authorize request, query intact
        consent = browser.get(next_path)
        assert "Sign in the broker command line?" in consent.text and "alice@example.com" in consent.text
        answer = browser.post("/oauth2/authorize", data={**hidden_fields(consent.text), "decision": "allow"})
        assert httpx.get(answer.headers["location"]).status_code == 200  # the helper's listener
        return True

    helper = Broker(live.url)
    tokens = helper.login_loopback(open_browser, lambda _: None)
    assert (tokens.principal, tokens.mfa) == ("alice@example.com", "mfa")
    assert tokens.refresh_token.startswith("bkr_rt_")
    store.set_refresh_token(live.url, tokens.refresh_token)
    creds = helper.credentials(helper.access_token(), "readonly", 900)
    assert list(creds) == ["Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"]
    caller = boto3.client(
        "sts",
        endpoint_url=sts_endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).get_caller_identity()
    assert caller["Arn"] == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"
    events = [(e.event, e.outcome, e.reason, e.channel) for e in live.audit() if e.event.startswith(("cli", "cred"))]
    assert events == [
        ("cli_authorize", "ok", "code_issued", "cli"),
        ("cli_login", "ok", "authorization_code", "cli"),
        ("cli_token", "ok", "refreshed", "cli"),
        ("credentials", "ok", "issued", "cli"),
    ]
    assert [i.channel for i in live.issuances()] == ["cli"]
    # Nothing secret in the audit trail: codes and tokens appear as HMAC references at most.
    trail = str([e.detail for e in live.audit()])
    assert tokens.refresh_token not in trail and creds["SecretAccessKey"] not in trail


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/callback",
        "http://localhost:5000/callback",  # RFC 8252 section 8.3: the literal, not a name
        "http://127.0.0.1:5000@evil.example/callback",
        "http://127.0.0.1/callback",  # no port
        "http://127.0.0.2:5000/callback",
        "http://127.0.0.1:5000/callback#frag",
    ],
)
def test_non_loopback_redirect_uri_is_refused_without_redirect(
    live: CliBroker, web: httpx.Client, redirect_uri: str
) -> None:
    mark = live.last_seq()
    query = {"response_type": "code", "client_id": "broker-cli", "redirect_uri": redirect_uri}
    response = web.get("/oauth2/authorize", params={**query, "code_challenge": s256(VERIFIER)})
    assert response.status_code == 400 and "location" not in response.headers
    assert response.json()["error"] == "invalid_request"
    assert refusals(live, mark) == [("cli_authorize", "denied", "authorize.redirect_uri_not_loopback")]


def test_ipv6_loopback_is_accepted(live: CliBroker, web: httpx.Client) -> None:
    code = code_for(web, redirect_uri="http://[::1]:6123/cb", challenge=s256(VERIFIER))
    answer = token(live, grant_type="authorization_code", code=code, redirect_uri="http://[::1]:6123/cb",
                   code_verifier=VERIFIER)  # fmt: skip
    assert answer.status_code == 200 and answer.json()["token_type"] == "Bearer"


@pytest.mark.parametrize(
    ("change", "error", "reason"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request", "authorize.pkce_missing"),
        ({"code_challenge": ""}, "invalid_request", "authorize.pkce_missing"),
        ({"response_type": "token"}, "unsupported_response_type", "authorize.response_type"),
    ],
)
def test_bad_authorization_requests_go_back_to_the_listener_with_an_error(
    live: CliBroker, web: httpx.Client, change: dict[str, str], error: str, reason: str
) -> None:
    mark = live.last_seq()
    query = {
        "response_type": "code",
        "client_id": "broker-cli",
        "redirect_uri": "http://127.0.0.1:7000/callback",
        "code_challenge": s256(VERIFIER),
        "code_challenge_method": "S256",
        "state": "st",
        **change,
    }
    response = web.get("/oauth2/authorize", params=query)
    assert response.status_code == 303
    params = parse_qs(urlsplit(response.headers["location"]).query)
    assert params["error"] == [error] and params["state"] == ["st"] and "code" not in params
    assert refusals(live, mark) == [("cli_authorize", "denied", reason)]


def test_wrong_verifier_burns_the_code_and_replay_revokes_the_sign_in(live: CliBroker, web: httpx.Client) -> None:
    uri = "http://127.0.0.1:7001/callback"
    code = code_for(web, redirect_uri=uri, challenge=s256(VERIFIER))
    mark = live.last_seq()
    wrong = token(live, grant_type="authorization_code", code=code, redirect_uri=uri, code_verifier="w" * 43)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant" and "access_token" not in wrong.text
    assert refusals(live, mark) == [("cli_login", "denied", "pkce_mismatch")]
    # The code is gone even with the right verifier now.
    again = token(live, grant_type="authorization_code", code=code, redirect_uri=uri, code_verifier=VERIFIER)
    assert again.json()["error"] == "invalid_grant"

    code = code_for(web, redirect_uri=uri, challenge=s256(VERIFIER))
    first = token(live, grant_type="authorization_code", code=code, redirect_uri=uri, code_verifier=VERIFIER)
    assert first.status_code == 200
    mark = live.last_seq()
    replay = token(live, grant_type="authorization_code", code=code, redirect_uri=uri, code_verifier=VERIFIER)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    [event] = live.audit(mark)
    assert (event.reason, event.detail["family_revoked"]) == ("code_replay", True)
    # RFC 6749 section 4.1.2: the tokens issued from the replayed code are revoked.
    refreshed = token(live, grant_type="refresh_token", refresh_token=first.json()["refresh_token"])
    assert refreshed.json()["error"] == "invalid_grant"
    api = httpx.get(f"{live.url}/api/v1/roles", headers={"Authorization": f"Bearer {first.json()['access_token']}"})
    assert api.status_code == 401 and api.json()["error"] == "invalid_token"
    assert api.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_redirect_uri_mismatch_and_expired_code(live: CliBroker, web: httpx.Client) -> None:
    uri = "http://127.0.0.1:7002/callback"
    code = code_for(web, redirect_uri=uri, challenge=s256(VERIFIER))
    mark = live.last_seq()
    other = token(live, grant_type="authorization_code", code=code, redirect_uri=uri + "x", code_verifier=VERIFIER)
    assert other.json()["error"] == "invalid_grant"
    code = code_for(web, redirect_uri=uri, challenge=s256(VERIFIER))
    live.clock.advance(61)
    late = token(live, grant_type="authorization_code", code=code, redirect_uri=uri, code_verifier=VERIFIER)
    assert late.json()["error"] == "invalid_grant"
    reasons = [r for r in refusals(live, mark) if r[0] == "cli_login"]
    assert reasons == [("cli_login", "denied", "redirect_mismatch"), ("cli_login", "denied", "code_expired")]


def test_other_clients_cannot_use_the_cli_grants(live: CliBroker) -> None:
    mark = live.last_seq()
    response = httpx.post(
        f"{live.url}/oauth2/token", data={"grant_type": "refresh_token", "refresh_token": "x", "client_id": "evil"}
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert refusals(live, mark) == [("oauth_token", "denied", "client.public")]


# ---------------------------------------------------------------- device code


def test_device_flow_pending_slow_down_approve_and_replay(live: CliBroker, web: httpx.Client) -> None:
    grant = httpx.post(f"{live.url}/oauth2/device_authorization", data={"client_id": "broker-cli"}).json()
    assert grant["verification_uri"] == f"{live.url}/device" and grant["interval"] == 1
    assert grant["verification_uri_complete"].endswith(grant["user_code"])
    mark = live.last_seq()
    poll = {"grant_type": DEVICE, "device_code": grant["device_code"]}
    assert token(live, **poll).json()["error"] == "authorization_pending"
    assert refusals(live, mark) == []  # waiting is not a refusal
    fast = token(live, **poll)  # immediately again: RFC 8628 section 3.5
    assert fast.status_code == 400 and fast.json()["error"] == "slow_down"
    assert refusals(live, mark) == [("cli_login", "denied", "device_poll_too_fast")]
    assert live.audit(mark)[0].detail["interval"] == 6  # 1 + 5, for all later polls

    page = web.get("/device", params={"user_code": grant["user_code"]})
    assert "Only approve if you just ran" in page.text and "127.0.0.1" in page.text
    assert web.post("/device", data={**hidden_fields(page.text), "decision": "allow"}).status_code == 200
    live.clock.advance(3)
    assert token(live, **poll).json()["error"] == "slow_down"  # 3 s < the grown 6 s interval; now 11 s
    live.clock.advance(12)
    issued = token(live, **poll)
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert (body["principal"], body["mfa"], body["token_type"]) == ("alice@example.com", "mfa", "Bearer")

    mark = live.last_seq()
    live.clock.advance(12)
    replay = token(live, **poll)
    assert replay.json()["error"] == "invalid_grant" and "access_token" not in replay.text
    [event] = live.audit(mark)
    assert (event.event, event.reason, event.detail["family_revoked"]) == ("cli_login", "device_code_replay", True)
    assert token(live, grant_type="refresh_token", refresh_token=body["refresh_token"]).json()["error"] == (
        "invalid_grant"
    )


def test_device_denied_expired_and_wrong_codes(live: CliBroker, web: httpx.Client) -> None:
    grant = httpx.post(f"{live.url}/oauth2/device_authorization", data={"client_id": "broker-cli"}).json()
    page = web.get("/device", params={"user_code": grant["user_code"]})
    web.post("/device", data={**hidden_fields(page.text), "decision": "deny"})
    mark = live.last_seq()
    denied = token(live, grant_type=DEVICE, device_code=grant["device_code"])
    assert denied.status_code == 400 and denied.json()["error"] == "access_denied"
    assert refusals(live, mark) == [("cli_login", "denied", "device_denied_by_user")]

    grant = httpx.post(f"{live.url}/oauth2/device_authorization", data={"client_id": "broker-cli"}).json()
    live.clock.advance(601)
    mark = live.last_seq()
    assert token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["error"] == "expired_token"
    assert token(live, grant_type=DEVICE, device_code="never-issued").json()["error"] == "invalid_grant"
    assert refusals(live, mark) == [
        ("cli_login", "denied", "device_code_expired"),
        ("cli_login", "denied", "device_code_unknown"),
    ]
    # An expired code cannot be approved, and a made-up code is refused on the page (audited).
    mark = live.last_seq()
    assert (
        web.get("/device", params={"user_code": grant["user_code"]}, headers={"Accept": "text/html"}).status_code == 400
    )
    assert web.get("/device", params={"user_code": "BCDF-GHJK"}).status_code == 400
    assert refusals(live, mark) == [("device_confirm", "denied", "user_code_unknown")] * 2
    unknown = httpx.post(f"{live.url}/oauth2/device_authorization", data={"client_id": "someone"})
    assert unknown.status_code == 401 and unknown.json()["error"] == "invalid_client"


def test_device_page_needs_a_session_and_csrf(live: CliBroker) -> None:
    grant = httpx.post(f"{live.url}/oauth2/device_authorization", data={"client_id": "broker-cli"}).json()
    anonymous = httpx.get(f"{live.url}/device", params={"user_code": grant["user_code"]})
    assert anonymous.status_code == 303
    assert httpx.URL(anonymous.headers["location"]).params["next"] == f"/device?user_code={grant['user_code']}"
    web = live.browser()
    forged = web.post("/device", data={"user_code": grant["user_code"], "decision": "allow", "csrf": "x"})
    assert forged.status_code == 403
    web.close()
    assert token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["error"] == "authorization_pending"


# ---------------------------------------------------------------- refresh, revocation, API


def test_refresh_rotation_reuse_revokes_the_family(live: CliBroker, web: httpx.Client) -> None:
    grant = device_login(live, web)
    first = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()
    second = token(live, grant_type="refresh_token", refresh_token=first["refresh_token"]).json()
    assert second["refresh_token"] != first["refresh_token"]
    mark = live.last_seq()
    reuse = token(live, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reuse.status_code == 400 and reuse.json()["error"] == "invalid_grant"
    [event] = live.audit(mark)
    assert (event.event, event.reason, event.detail["family_revoked"]) == ("cli_token", "refresh_token_reuse", True)
    mark = live.last_seq()
    # The thief's (or the owner's) newer token is dead too, and so is the access token.
    assert token(live, grant_type="refresh_token", refresh_token=second["refresh_token"]).json()["error"] == (
        "invalid_grant"
    )
    api = httpx.post(
        f"{live.url}/api/v1/credentials",
        json={"role": "readonly"},
        headers={"Authorization": f"Bearer {second['access_token']}"},
    )
    assert api.status_code == 401 and "SecretAccessKey" not in api.text
    assert refusals(live, mark) == [
        ("cli_token", "denied", "refresh_family_revoked"),
        ("api_auth", "denied", "bearer_revoked"),
    ]
    assert live.issuances() == []


def test_sign_in_ends_with_the_family_and_revocation_tells_the_user(live: CliBroker, web: httpx.Client) -> None:
    grant = device_login(live, web)
    body = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()
    store.set_refresh_token(live.url, body["refresh_token"])
    helper = Broker(live.url)
    helper.access_token()  # rotates; the store now holds the new token
    mark = live.last_seq()
    revoked = httpx.post(
        f"{live.url}/oauth2/revoke",
        data={"token": store.get_refresh_token(live.url) or "", "client_id": "broker-cli"},
    )
    assert revoked.status_code == 200
    assert refusals(live, mark) == [("cli_revoke", "ok", "revoked")]
    with pytest.raises(HelperError) as failure:
        helper.access_token()
    assert "run `broker login --url" in failure.value.message and failure.value.reason == "invalid_grant"
    assert store.get_refresh_token(live.url) is None
    # Unknown tokens are not an error (RFC 7009 section 2.2).
    assert httpx.post(f"{live.url}/oauth2/revoke", data={"token": "nope", "client_id": "broker-cli"}).status_code == 200

    grant = device_login(live, web)
    body = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()
    live.clock.advance(13 * 3600)  # past the 12-hour sign-in
    assert token(live, grant_type="refresh_token", refresh_token=body["refresh_token"]).json()["error"] == (
        "invalid_grant"
    )


def test_api_refuses_without_credentials_and_keeps_policy(live: CliBroker, web: httpx.Client) -> None:
    grant = device_login(live, web)
    access = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    mark = live.last_seq()
    cases = [
        (httpx.get(f"{live.url}/api/v1/roles"), 401, "invalid_token"),
        (httpx.get(f"{live.url}/api/v1/roles", headers={"Authorization": "Bearer x.y.z"}), 401, "invalid_token"),
        (httpx.post(f"{live.url}/api/v1/credentials", content=b"[", headers=bearer), 400, "invalid_request"),
        (
            httpx.post(f"{live.url}/api/v1/credentials", json={"role": "readonly", "x": 1}, headers=bearer),
            400,
            "invalid_request",
        ),
        (httpx.post(f"{live.url}/api/v1/credentials", json={"role": "admin"}, headers=bearer), 403, "mfa_required"),
        (httpx.post(f"{live.url}/api/v1/credentials", json={"role": "nope"}, headers=bearer), 403, "access_denied"),
    ]
    for response, status, error in cases:
        assert (response.status_code, response.json()["error"]) == (status, error)
        assert "SecretAccessKey" not in response.text
    assert [(event, reason) for event, _, reason in refusals(live, mark)] == [
        ("api_auth", "bearer_missing"),
        ("api_auth", "bearer_invalid"),
        ("credentials", "api_body_not_json"),
        ("credentials", "api_body_shape"),
        ("credentials", "mfa_insufficient"),
        ("credentials", "role_unknown"),
    ]
    assert all(outcome == "denied" for _, outcome, _ in refusals(live, mark))
    assert live.issuances() == []


def test_api_refuses_a_token_whose_signing_key_was_revoked(
    live: CliBroker, web: httpx.Client, make_config: Callable[..., dict[str, Any]]
) -> None:
    """`broker signing-keys rotate --revoke` (docs/operations.md): the live sign-in's access token stops working
    at once, though the serving process still caches the revoked key."""
    from pydantic import SecretStr

    from broker.audit import AuditTrail
    from broker.keys import Keys
    from broker.oauth.tokens import TokenService
    from broker.settings import load_settings
    from tests.conftest import SECRET

    grant = device_login(live, web)
    access = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["access_token"]
    bearer = {"Authorization": f"Bearer {access}"}
    assert httpx.get(f"{live.url}/api/v1/roles", headers=bearer).status_code == 200
    database = Database(live.db_url)
    operator = TokenService(load_settings(None, **make_config()), db=database, keys=Keys(SecretStr(SECRET)))
    operator.rotate_now(revoke=True, audit=AuditTrail(Keys(SecretStr(SECRET))), actor="operator:oncall")
    database.dispose()
    mark = live.last_seq()
    refused = httpx.get(f"{live.url}/api/v1/roles", headers=bearer)
    assert (refused.status_code, refused.json()["error"]) == (401, "invalid_token")
    assert refusals(live, mark) == [("api_auth", "denied", "bearer_key_revoked")]


def test_metadata_names_the_cli_endpoints(live: CliBroker) -> None:
    meta = httpx.get(f"{live.url}/.well-known/oauth-authorization-server").json()
    assert meta["authorization_endpoint"] == f"{live.url}/oauth2/authorize"
    assert meta["device_authorization_endpoint"] == f"{live.url}/oauth2/device_authorization"
    assert meta["revocation_endpoint"] == f"{live.url}/oauth2/revoke"
    assert meta["code_challenge_methods_supported"] == ["S256"]
    assert {"authorization_code", "refresh_token", DEVICE} <= set(meta["grant_types_supported"])


# ---------------------------------------------------------------- two broker processes, one database


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_device_code_works_once_across_two_broker_processes(
    live: CliBroker, web: httpx.Client, make_config: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    port = free_port()
    config = make_config(public_url=live.url, identity_stores=[local_store()])
    config["oauth"] = {"cli": {"device_poll_interval_seconds": 1}}
    config["log_level"] = "WARNING"
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(config))
    second = subprocess.Popen(
        [str(Path(sys.executable).parent / "broker"), "serve", "-c", str(path), "--port", str(port)],
        env=broker_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, process=second, timeout=60)
        other = f"http://127.0.0.1:{port}"
        grant = device_login(live, web, base=other)  # issued by the second process, approved on the first
        live.clock.advance(5)
        results: list[httpx.Response] = []
        barrier = threading.Barrier(4)

        def poll(base: str) -> None:
            barrier.wait()
            results.append(
                httpx.post(
                    f"{base}/oauth2/token",
                    data={"grant_type": DEVICE, "device_code": grant["device_code"], "client_id": "broker-cli"},
                    timeout=30,
                )
            )

        mark = live.last_seq()
        threads = [threading.Thread(target=poll, args=(b,)) for b in (live.url, other, live.url, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ok = [r for r in results if r.status_code == 200]
        assert len(ok) == 1, [r.text for r in results]
        # The others were either on time and replays, or (same-second repeats) told to slow down.
        assert all(r.json()["error"] in {"invalid_grant", "slow_down"} for r in results if r.status_code != 200)
        events = live.audit(mark)
        assert [e.reason for e in events if e.outcome == "ok"] == ["device_code"]
        assert len([e for e in events if e.outcome == "denied"]) == 3
        replay = httpx.post(
            f"{other}/oauth2/token",
            data={"grant_type": DEVICE, "device_code": grant["device_code"], "client_id": "broker-cli"},
        )
        assert replay.json()["error"] in {"invalid_grant", "slow_down"}
    finally:
        second.terminate()
        second.wait(timeout=20)


def test_disabled_principal_gets_no_credentials_through_a_live_cli_sign_in(live: CliBroker, web: httpx.Client) -> None:
    """Disabling a person is checked at every issuance, so a CLI sign-in made before it yields nothing after."""
    grant = device_login(live, web)
    access = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["access_token"]
    db = Database(live.db_url)
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE principals SET disabled = true WHERE username = 'alice'"))
    db.dispose()
    mark = live.last_seq()
    response = httpx.post(
        f"{live.url}/api/v1/credentials", json={"role": "readonly"}, headers={"Authorization": f"Bearer {access}"}
    )
    assert (response.status_code, response.json()["error"]) == (403, "access_denied")
    assert "SecretAccessKey" not in response.text
    assert refusals(live, mark) == [("credentials", "denied", "principal_disabled")]
    assert live.issuances() == []


def test_api_503_carries_retry_after(live: CliBroker, web: httpx.Client) -> None:
    """The audit trail is down: no credentials, and the API says when to retry (RFC 9110 section 10.2.3)."""
    grant = device_login(live, web)
    access = token(live, grant_type=DEVICE, device_code=grant["device_code"]).json()["access_token"]
    db = Database(live.db_url)
    try:
        with audit_refused(db, live.db_url):
            response = httpx.post(
                f"{live.url}/api/v1/credentials",
                json={"role": "readonly"},
                headers={"Authorization": f"Bearer {access}"},
                timeout=30,
            )
    finally:
        db.dispose()
    assert (response.status_code, response.json()["error"]) == (503, "temporarily_unavailable")
    assert response.headers["retry-after"] == "60" and "SecretAccessKey" not in response.text
    assert live.issuances() == []
