"""Directory sign-in through the portal over real HTTP: the form, the session, MFA from the broker's own
factors, credentials, and every refusal with its status, reason and exactly one audit event.

Peers: the broker on a loopback socket, Debian's slapd over LDAPS (plain LDAP in dev mode), moto's STS,
SQLite or PostgreSQL, a loopback TCP proxy for the vanished and the slow directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import httpx
import pyotp
import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.mfa.conftest import HTML, enrol_totp, post_form
from tests.support.clock import MovableClock
from tests.support.portal import csrf_from, env_credentials
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records
from tests.support.slapd import PASSWORDS, DirectoryPeer, running_directory
from tests.support.tcp_proxy import TcpProxy

# A role that a password alone may use (the base config's roles need MFA or more).
PASSWORD_ROLE = {
    "name": "docs-reader",
    "role_arn": "arn:aws:iam::123456789012:role/DocsReader",
    "grant": [{"stores": ["corp"], "groups": ["engineering"]}],
    "mfa": "none",
}


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectoryPeer]:
    with running_directory(tmp_path_factory.mktemp("ldap")) as peer:
        yield peer


class Running(Records):
    def __init__(self, url: str, db_url: str, clock: MovableClock) -> None:
        self.url, self.db_url, self.clock = url, db_url, clock

    def code(self, secret: str, steps: int = 0) -> str:
        return pyotp.TOTP(secret).at(self.clock() + timedelta(seconds=30 * steps))


@pytest.fixture
def start(make_config: Callable[..., dict[str, Any]], db_url: str) -> Iterator[Callable[..., Running]]:
    """Start a broker with the given identity stores (and overrides); each is stopped at the end."""
    servers: list[LiveServer] = []

    def run(stores: list[dict[str, Any]], **overrides: Any) -> Running:
        config = make_config(identity_stores=stores, **overrides)
        config["roles"].append(PASSWORD_ROLE)
        port = free_port()
        config["public_url"] = f"http://localhost:{port}"
        clock = MovableClock()
        server = LiveServer(create_app(load_settings(None, **config), clock=clock), port=port)
        server.__enter__()
        servers.append(server)
        return Running(f"http://127.0.0.1:{port}", db_url, clock)

    try:
        yield run
    finally:
        for server in servers:
            server.__exit__(None, None, None)


def sign_in(client: httpx.Client, user: str, password: str, *, store: str = "corp", **headers: str) -> httpx.Response:
    form = client.get(f"/login/ldap/{store}", params={"next": "/"}, headers=HTML)
    assert form.status_code == 200, form.text
    return client.post(
        f"/login/ldap/{store}",
        data={"username": user, "password": password, "csrf": csrf_from(form.text), "next": "/"},
        headers={**HTML, **headers},
    )


def new_events(running: Records, after: int) -> list[tuple[str, str, str, str | None, str | None]]:
    return [(e.event, e.outcome, e.reason, e.store, e.principal) for e in running.audit(after)]


# ---------------------------------------------------------------- sign-in


def test_sign_in_form_session_roles_and_credentials(start: Callable[..., Running], directory: DirectoryPeer) -> None:
    running = start([directory.store()])
    with httpx.Client(base_url=running.url, timeout=30) as client:
        # One store: /login goes straight to the directory's form, which labels its fields.
        login = client.get("/login", params={"next": "/"}, headers=HTML)
        assert login.status_code == 303 and login.headers["location"] == "/login/ldap/corp?next=/"
        form = client.get("/login/ldap/corp", headers=HTML)
        assert '<label for="ldap-username-corp">Username or e-mail address</label>' in form.text
        assert '<label for="ldap-password-corp">Password</label>' in form.text
        response = sign_in(client, "alice", PASSWORDS["alice"])
        assert response.status_code == 303 and response.headers["location"] == "/"
        assert "broker_session" in response.cookies
        portal = client.get("/", headers=HTML)
        assert portal.status_code == 200
        assert 'data-role="docs-reader"' in portal.text and 'data-role="readonly"' in portal.text
        # A directory proves a password only: the MFA role says what it needs.
        assert "needs mfa sign-in" in portal.text
        issued = client.post("/credentials", data={"role": "docs-reader", "csrf": csrf_from(portal.text)}, headers=HTML)
        assert issued.status_code == 200, issued.text
        assert env_credentials(issued.text)["AWS_ACCESS_KEY_ID"].startswith(("ASIA", "FSIA"))
    [login_event, credentials] = [e for e in running.audit() if e.event in ("login", "credentials")]
    assert (login_event.outcome, login_event.reason, login_event.store) == ("ok", "authenticated", "corp")
    assert login_event.principal == "alice@example.com"
    assert login_event.detail["protocol"] == "ldap" and login_event.detail["mfa"] == "none"
    assert (credentials.outcome, credentials.reason) == ("ok", "issued")
    # The password appears nowhere in the audit trail.
    assert PASSWORDS["alice"] not in str([(e.detail, e.principal) for e in running.audit()])


def test_roles_needing_mfa_use_the_brokers_own_factors(start: Callable[..., Running], directory: DirectoryPeer) -> None:
    running = start([directory.store()])
    with httpx.Client(base_url=running.url, timeout=30) as client:
        assert sign_in(client, "alice", PASSWORDS["alice"]).status_code == 303
        portal = client.get("/", headers=HTML)
        refused = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)}, headers=HTML)
        assert refused.status_code == 403
        [denied] = [e for e in running.audit() if e.event == "credentials"]
        assert (denied.outcome, denied.reason) == ("denied", "mfa_insufficient")
        secret, _ = enrol_totp(client, running)
        running.clock.advance(seconds=30)
        assert post_form(client, "/mfa/verify/totp", code=running.code(secret)).status_code == 303
        portal = client.get("/", headers=HTML)
        issued = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)}, headers=HTML)
        assert issued.status_code == 200, issued.text
    issued_events = [e for e in running.audit() if e.event == "credentials" and e.outcome == "ok"]
    assert [e.detail["role"] for e in issued_events] == ["readonly"]


def test_plain_ldap_sign_in_in_dev_mode(start: Callable[..., Running], directory: DirectoryPeer) -> None:
    running = start([directory.store(tls="plain")], mode="dev")
    with httpx.Client(base_url=running.url, timeout=30) as client:
        assert sign_in(client, "bob@example.com", PASSWORDS["bob"]).status_code == 303
    [event] = [e for e in running.audit() if e.event == "login"]
    assert (event.outcome, event.principal) == ("ok", "bob@example.com")


# ---------------------------------------------------------------- refusals


REFUSALS = [
    ("alice", "", "ldap.password_empty"),
    ("", "x", "ldap.username_invalid"),
    ("alice", "not-her-password", "ldap.password_invalid"),
    ("al*", PASSWORDS["alice"], "ldap.user_not_found"),
    ("alice)(uid=*", PASSWORDS["alice"], "ldap.user_not_found"),
    # A NUL would cut a C string to "alice"; names never hold control characters. Audited as U+FFFD.
    ("alice\x00", PASSWORDS["alice"], "ldap.username_invalid"),
    ("carol", PASSWORDS["carol"], "ldap.user_not_found"),
    ("shared@example.com", PASSWORDS["dave"], "ldap.user_ambiguous"),
]


def test_each_refusal_is_a_401_with_its_reason_and_one_audit_event(
    start: Callable[..., Running], directory: DirectoryPeer
) -> None:
    running = start([directory.store()])
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for username, password, reason in REFUSALS:
            before = running.last_seq()
            response = sign_in(client, username, password)
            assert response.status_code == 401, (username, response.text)
            assert "broker_session" not in response.cookies
            # The form comes back with the reason announced and the username kept.
            assert 'role="alert"' in response.text and "authentication_failed" in response.text
            shown = username.replace("\x00", "\ufffd") or None
            assert new_events(running, before) == [("login", "denied", reason, "corp", shown)], username
            # API clients get the JSON error.
            api = sign_in(client, username, password, Accept="application/json")
            assert api.status_code == 401 and api.json()["error"] == "authentication_failed"
    details = str([e.detail for e in running.audit()])
    assert PASSWORDS["alice"] not in details and PASSWORDS["carol"] not in details


def test_directory_down_slow_or_unverified_is_a_503_with_retry_after(
    start: Callable[..., Running], directory: DirectoryPeer
) -> None:
    with TcpProxy(directory.slapd.tls_port or 0) as down, TcpProxy(directory.slapd.tls_port or 0) as slow:
        down.cut()
        slow.latency = 10.0
        running = start(
            [
                directory.store("corp"),
                directory.store("down", url=f"ldaps://127.0.0.1:{down.port}"),
                directory.store("slow", url=f"ldaps://127.0.0.1:{slow.port}", timeout_seconds=1),
                directory.store("badca", ca_file=str(directory.other_ca)),
            ]
        )
        with httpx.Client(base_url=running.url, timeout=30) as client:
            for store, reason in [("down", "ldap.unavailable"), ("slow", "ldap.timeout"), ("badca", "ldap.tls_failed")]:
                before = running.last_seq()
                response = sign_in(client, "alice", PASSWORDS["alice"], store=store)
                assert response.status_code == 503, (store, response.text)
                assert response.headers["retry-after"] == "30"
                assert "is not answering right now" in response.text
                [event] = running.audit(before)
                assert (event.event, event.outcome, event.reason, event.store) == ("login", "denied", reason, store)
                assert event.detail["error"] == "temporarily_unavailable" and event.detail["stage"]


def test_password_guessing_hits_the_login_limit_like_break_glass_accounts(
    start: Callable[..., Running], directory: DirectoryPeer
) -> None:
    running = start([directory.store()], rate_limits={"limits": {"login.principal": "3/minute"}})
    with httpx.Client(base_url=running.url, timeout=30) as client:
        for guess in ("guess-1", "guess-2", "guess-3"):
            assert sign_in(client, "alice", guess).status_code == 401
        # The right password, in another case (directories match names case-insensitively): still limited.
        locked = sign_in(client, "ALICE", PASSWORDS["alice"])
        assert locked.status_code == 429
        assert 1 <= int(locked.headers["retry-after"]) <= 60
        assert "broker_session" not in locked.cookies
    reasons = [(e.event, e.outcome, e.reason) for e in running.audit() if e.event in ("login", "ratelimit")]
    assert reasons == [
        *[("login", "denied", "ldap.password_invalid")] * 3,
        ("ratelimit", "denied", "rate_limited.login.principal"),
    ]


def test_unknown_store_and_missing_csrf(start: Callable[..., Running], directory: DirectoryPeer) -> None:
    running = start([directory.store()])
    with httpx.Client(base_url=running.url, timeout=30) as client:
        assert client.get("/login/ldap/nope", headers=HTML).status_code == 404
        client.get("/login/ldap/corp", headers=HTML)
        no_csrf = client.post("/login/ldap/corp", data={"username": "alice", "password": "x"}, headers=HTML)
        assert no_csrf.status_code == 403 and "csrf_failed" in no_csrf.text
    # The one CSRF rule: a sign-in form that names an account is refused with one audit event for it.
    refusals = [(e.outcome, e.reason, e.principal) for e in running.audit() if e.event == "login"]
    assert refusals == [("denied", "csrf_failed", "alice")]
