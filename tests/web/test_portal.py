"""The portal over real HTTP with break-glass sign-in: sessions, CSRF, redirects, issuance and audit.

Peers: the broker on a loopback socket, moto's STS server, SQLite or PostgreSQL, and the console stand-in.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pyotp
import pytest
from sqlalchemy import select, text

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.support.federation_standin import FederationStandIn
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import LiveServer

PASSWORD = "correct horse battery staple"
TOTP_SECRET = pyotp.random_base32()
PASSWORD_HASH = hash_password(PASSWORD)


@pytest.fixture
def standin(sts_endpoint: str) -> Iterator[FederationStandIn]:
    with FederationStandIn(sts_endpoint) as s:
        yield s


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]], standin: FederationStandIn) -> Iterator[LiveServer]:
    config = make_config(
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": PASSWORD_HASH,
                        "totp_secret": TOTP_SECRET,
                        "email": "alice@example.com",
                        "groups": ["engineering", "admins"],
                    }
                ],
            }
        ]
    )
    config["aws"]["federation_endpoint"] = standin.url
    app = create_app(load_settings(None, **config))
    with LiveServer(app) as server:
        yield server


@pytest.fixture
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, follow_redirects=False, timeout=30) as c:
        yield c


def code(offset: int = 0) -> str:
    return pyotp.TOTP(TOTP_SECRET).at(time.time() + offset)


def events(database: Database, event: str | None = None) -> list[AuditEvent]:
    with database.transaction() as s:
        query = select(AuditEvent).order_by(AuditEvent.seq)
        if event:
            query = query.where(AuditEvent.event == event)
        return list(s.scalars(query).all())


def issuances(database: Database) -> list[Issuance]:
    with database.transaction() as s:
        return list(s.scalars(select(Issuance)).all())


def signed_in(client: httpx.Client, *, step: int = 0) -> httpx.Response:
    """Alice signs in; ``step`` picks the TOTP code of a neighbouring time step (each code works once)."""
    response = login_local(client, store="breakglass", username="alice", password=PASSWORD, code=code(30 * step))
    assert response.status_code == 303, response.text
    return response


def test_break_glass_sign_in_shows_granted_roles_and_issues_working_credentials(
    client: httpx.Client, database: Database, sts_endpoint: str
) -> None:
    signed_in(client)
    portal = client.get("/", headers={"Accept": "text/html"})
    assert portal.status_code == 200
    assert 'data-role="readonly"' in portal.text and 'data-role="admin"' in portal.text
    assert "break-glass account" in portal.text
    # admin needs phishing-resistant MFA; TOTP is not, so the portal says what is missing.
    assert "needs phishing-resistant sign-in" in portal.text

    page = client.post(
        "/credentials",
        data={"role": "readonly", "duration": "900", "csrf": csrf_from(portal.text)},
        headers={"Accept": "text/html"},
    )
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    env = env_credentials(page.text)
    caller = boto3.client(
        "sts",
        endpoint_url=sts_endpoint,
        region_name="us-east-1",
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
    ).get_caller_identity()
    assert caller["Arn"] == "arn:aws:sts::123456789012:assumed-role/ReadOnly/alice"

    [row] = issuances(database)
    assert (row.role_name, row.channel, row.access_key_id) == ("readonly", "cli", env["AWS_ACCESS_KEY_ID"])
    assert (row.source_identity, row.granted_duration_seconds) == ("alice@example.com", 900)
    assert row.session_tags == {"Email": "alice@example.com"} and row.transitive_tag_keys == ["Email"]
    assert row.policy_digest and row.client_ip == "127.0.0.1" and row.user_agent
    login = events(database, "login")
    assert [(e.outcome, e.reason, e.detail["break_glass"]) for e in login] == [("ok", "break_glass", True)]
    [issued] = events(database, "credentials")
    assert issued.detail["access_key_id"] == env["AWS_ACCESS_KEY_ID"]
    assert issued.detail["source_identity"] == "alice@example.com"


def test_open_console_lands_on_the_federation_standin(
    client: httpx.Client, database: Database, standin: FederationStandIn
) -> None:
    signed_in(client)
    portal = client.get("/", headers={"Accept": "text/html"})
    response = client.post("/console", data={"role": "readonly", "csrf": csrf_from(portal.text)})
    assert response.status_code == 303
    assert response.headers["location"].startswith(standin.url + "?Action=login")
    landing = httpx.get(response.headers["location"])
    assert landing.status_code == 200 and "assumed-role/ReadOnly/alice" in landing.text
    [row] = issuances(database)
    assert row.channel == "console"


def test_role_needing_more_mfa_is_refused_with_one_audit_event_and_no_sts_call(
    client: httpx.Client, database: Database
) -> None:
    signed_in(client)
    portal = client.get("/", headers={"Accept": "text/html"})
    before = len(events(database))
    response = client.post(
        "/credentials", data={"role": "admin", "csrf": csrf_from(portal.text)}, headers={"Accept": "text/html"}
    )
    assert response.status_code == 403
    assert "phishing-resistant" in response.text
    assert issuances(database) == []
    new = events(database)[before:]
    assert [(e.event, e.outcome, e.reason) for e in new] == [("credentials", "denied", "mfa_insufficient")]


def test_role_not_granted_is_refused(client: httpx.Client, database: Database) -> None:
    signed_in(client)
    portal = client.get("/", headers={"Accept": "text/html"})
    response = client.post("/credentials", data={"role": "nonexistent", "csrf": csrf_from(portal.text)})
    assert response.status_code == 403
    assert response.json()["error"] == "access_denied"
    assert issuances(database) == []
    assert events(database)[-1].reason == "role_unknown"


def test_wrong_password_and_wrong_code_are_refused_and_audited(client: httpx.Client, database: Database) -> None:
    bad_pw = login_local(client, store="breakglass", username="alice", password="nope", code=code())
    bad_code = login_local(
        client, store="breakglass", username="alice", password=PASSWORD, code=str((int(code()) + 1) % 1000000).zfill(6)
    )
    unknown = login_local(client, store="breakglass", username="mallory", password=PASSWORD, code=code())
    assert [r.status_code for r in (bad_pw, bad_code, unknown)] == [401, 401, 401]
    assert "Sign-in failed" in bad_pw.text
    assert [(e.outcome, e.reason) for e in events(database, "login")] == [
        ("denied", "password_invalid"),
        ("denied", "totp_invalid"),
        ("denied", "password_invalid"),
    ]
    assert "broker_session" not in client.cookies


def test_totp_code_is_accepted_only_once(live: LiveServer, database: Database) -> None:
    the_code = code()
    with httpx.Client(base_url=live.url) as first, httpx.Client(base_url=live.url) as second:
        ok = login_local(first, store="breakglass", username="alice", password=PASSWORD, code=the_code)
        replay = login_local(second, store="breakglass", username="alice", password=PASSWORD, code=the_code)
    assert ok.status_code == 303
    assert replay.status_code == 400
    assert events(database, "login")[-1].reason == "totp_replay"


def test_login_without_csrf_token_is_refused(client: httpx.Client, database: Database) -> None:
    client.get("/login")
    response = client.post(
        "/login/local/breakglass", data={"username": "alice", "password": PASSWORD, "totp": code(), "csrf": "forged"}
    )
    assert response.status_code == 403 and response.json()["error"] == "csrf_failed"
    # Refused before the password is checked, and audited against the account the form names.
    [refused] = events(database, "login")
    assert (refused.outcome, refused.reason, refused.principal, refused.store) == (
        "denied",
        "csrf_failed",
        "alice",
        "breakglass",
    )
    assert refused.detail == {"error": "csrf_failed", "path": "/login/local/breakglass"}


def refusals(database: Database, after: int) -> list[tuple[str, str, str, str | None, str]]:
    return [
        (e.event, e.outcome, e.reason, e.principal, e.detail.get("path", ""))
        for e in events(database)
        if e.seq > after and e.outcome == "denied"
    ]


@pytest.mark.parametrize("form", ["/credentials", "/console", "/logout"])
def test_forms_without_or_with_another_sessions_csrf_token_are_refused_and_audited(
    client: httpx.Client, live: LiveServer, database: Database, form: str
) -> None:
    """One CSRF check for every form: a missing or foreign token is refused (403) and audited once."""
    signed_in(client)
    with httpx.Client(base_url=live.url) as other:
        signed_in(other, step=1)
        foreign = csrf_from(other.get("/", headers={"Accept": "text/html"}).text)
    before = events(database)[-1].seq
    event = {"/logout": "logout"}.get(form, "credentials")
    for token in ("", foreign):
        response = client.post(form, data={"role": "readonly", "csrf": token}, headers={"Accept": "application/json"})
        assert response.status_code == 403 and response.json()["error"] == "csrf_failed"
    assert refusals(database, before) == [(event, "denied", "csrf_failed", "alice@example.com", form)] * 2
    assert issuances(database) == []
    # Still signed in: a forged sign-out changed nothing.
    assert client.get("/", headers={"Accept": "application/json"}).status_code == 200


def test_a_form_without_any_session_is_refused_without_an_audit_event(client: httpx.Client, database: Database) -> None:
    """Deliberately not audited (docs/security.md): nothing names anyone, and anyone can send it."""
    before = events(database)[-1].seq if events(database) else 0
    for form in ("/logout", "/credentials"):
        response = client.post(form, data={"role": "readonly", "csrf": "x"}, headers={"Accept": "application/json"})
        assert response.status_code in (401, 403)
        assert response.json()["error"] in ("csrf_failed", "login_required")
    assert refusals(database, before) == []


def test_a_disabled_person_is_refused_at_once_with_one_audit_event(client: httpx.Client, database: Database) -> None:
    """The refusal is raised inside the sign-in's transaction; it is audited once that transaction rolled back
    (before: it waited on SQLite's write lock for ten seconds, then answered 503 with no audit event)."""
    signed_in(client)
    with database.transaction() as s:
        s.execute(text("UPDATE principals SET disabled = :yes"), {"yes": True})
    started = time.monotonic()
    with httpx.Client(base_url=str(client.base_url)) as other:
        response = login_local(other, store="breakglass", username="alice", password=PASSWORD, code=code(30))
    assert time.monotonic() - started < 5
    assert response.status_code == 403 and "This account is disabled." in response.text
    refused = [e for e in events(database, "login") if e.outcome == "denied"]
    assert [(e.reason, e.principal, e.detail["error"]) for e in refused] == [
        ("principal_disabled", "alice@example.com", "access_denied")
    ]


def test_signing_in_ends_the_browsers_earlier_session(client: httpx.Client, live: LiveServer) -> None:
    """A session planted in (or left in) this browser never outlives a sign-in, whoever it belonged to."""
    with httpx.Client(base_url=live.url) as planted:
        signed_in(planted)
        planted_cookie = planted.cookies.get("broker_session") or ""
    client.cookies.set("broker_session", planted_cookie)
    issued = signed_in(client, step=1).cookies.get("broker_session")
    assert issued and issued != planted_cookie
    with httpx.Client(base_url=live.url, cookies={"broker_session": planted_cookie}) as attacker:
        assert attacker.get("/", headers={"Accept": "application/json"}).status_code == 401


@pytest.mark.parametrize(
    "target",
    ["https://evil.example/", "//evil.example/", "/\\evil.example", "javascript:alert(1)", "/unknown-path", " /"],
)
def test_return_path_never_leaves_the_broker(client: httpx.Client, target: str) -> None:
    response = login_local(
        client, store="breakglass", username="alice", password=PASSWORD, code=code(), next_path=target
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/"


def test_session_id_changes_at_login(client: httpx.Client) -> None:
    """Session fixation: a cookie planted before sign-in is never the session after it."""
    client.cookies.set("broker_session", "attacker-chosen-value")
    issued = signed_in(client).cookies.get("broker_session")
    assert issued and issued != "attacker-chosen-value"
    with httpx.Client(base_url=str(client.base_url), cookies={"broker_session": "attacker-chosen-value"}) as other:
        assert other.get("/", headers={"Accept": "application/json"}).status_code == 401


def test_logout_ends_the_session(client: httpx.Client, database: Database) -> None:
    signed_in(client)
    cookie = client.cookies.get("broker_session")
    portal = client.get("/", headers={"Accept": "text/html"})
    assert client.post("/logout", data={"csrf": csrf_from(portal.text)}).status_code == 303
    with httpx.Client(base_url=str(client.base_url), cookies={"broker_session": cookie or ""}) as other:
        assert other.get("/", headers={"Accept": "application/json"}).status_code == 401
    assert events(database)[-1].event == "logout"


def test_unauthenticated_page_redirects_to_login_and_api_gets_401(client: httpx.Client) -> None:
    page = client.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 303 and page.headers["location"] == "/login?next=/"
    assert client.get("/").status_code == 401


def test_cookies_are_http_only_and_same_site(client: httpx.Client) -> None:
    response = signed_in(client)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie


def test_pages_carry_security_headers(client: httpx.Client) -> None:
    page = client.get("/login", headers={"Accept": "text/html"})
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert "<script>" not in page.text  # no inline script anywhere


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["status"] == "ok"


def test_audit_failure_means_no_credentials(client: httpx.Client, database: Database, db_url: str) -> None:
    """Fail closed: a database trigger makes the issuance's audit insert fail; nothing may leave."""
    signed_in(client)
    portal = client.get("/", headers={"Accept": "text/html"})
    with database.engine.begin() as conn:
        if db_url.startswith("sqlite"):
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_issued BEFORE INSERT ON audit_events "
                    "WHEN NEW.event = 'credentials' BEGIN SELECT RAISE(ABORT, 'audit down'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_issued() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.event = 'credentials' THEN RAISE EXCEPTION 'audit down'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_issued BEFORE INSERT ON audit_events FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_issued()"
                )
            )
    try:
        response = client.post(
            "/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)}, headers={"Accept": "text/html"}
        )
        assert response.status_code == 503 and response.headers["retry-after"] == "60"
        assert "AWS_SECRET_ACCESS_KEY" not in response.text and "ASIA" not in response.text
        assert issuances(database) == []  # rolled back with its audit event
    finally:
        with database.engine.begin() as conn:
            conn.execute(
                text("DROP TRIGGER refuse_issued" + ("" if db_url.startswith("sqlite") else " ON audit_events"))
            )


def test_sts_down_is_a_503_with_retry_after_and_an_audit_event(
    make_config: Callable[..., dict[str, Any]], database: Database
) -> None:
    from tests.support.processes import free_port

    config = make_config(
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": PASSWORD_HASH,
                        "totp_secret": TOTP_SECRET,
                        "groups": ["engineering"],
                    }
                ],
            }
        ]
    )
    config["aws"].update(sts_endpoint_url=f"http://127.0.0.1:{free_port()}", connect_timeout_seconds=0.5)
    with LiveServer(create_app(load_settings(None, **config))) as server, httpx.Client(base_url=server.url) as client:
        signed_in(client)
        portal = client.get("/", headers={"Accept": "text/html"})
        response = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json()["error"] == "temporarily_unavailable"
    assert issuances(database) == []
    assert events(database)[-1].reason == "sts_unavailable"
