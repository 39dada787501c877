"""Abuse limits, size caps and security headers on a live broker (real socket, moto STS, SQLite/PostgreSQL)."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pyotp
import pytest
from sqlalchemy import select

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent
from tests.support.portal import csrf_from
from tests.support.processes import LiveServer

PASSWORD = "correct horse battery staple"
TOTP_SECRET = pyotp.random_base32()


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]]) -> Iterator[LiveServer]:
    config = make_config(
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": hash_password(PASSWORD),
                        "totp_secret": TOTP_SECRET,
                        "groups": ["engineering"],
                    }
                ],
            }
        ],
        rate_limits={"limits": {"login.principal": "3/hour", "login.ip": "8/hour", "token.ip": "5/hour"}},
        server={"max_body_bytes": 8192, "max_header_bytes": 4096},
    )
    # A fresh secret per test keeps counters apart.
    config["secret_key"] = secrets.token_urlsafe(40)
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield server


def events(db_url: str, event: str) -> list[AuditEvent]:
    database = Database(db_url)
    try:
        with database.transaction() as s:
            return list(s.scalars(select(AuditEvent).where(AuditEvent.event == event)).all())
    finally:
        database.dispose()


def test_break_glass_guessing_is_limited_per_account_with_retry_after(live: LiveServer, db_url: str) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        page = client.get("/login", headers={"Accept": "text/html"})
        form = {"username": "alice", "password": "wrong-guess", "totp": "000000", "csrf": csrf_from(page.text)}
        statuses = [client.post("/login/local/breakglass", data=form).status_code for _ in range(3)]
        assert statuses == [401, 401, 401]
        refused = [client.post("/login/local/breakglass", data=form) for _ in range(3)]
    assert {r.status_code for r in refused} == {429}
    assert all(1 <= int(r.headers["Retry-After"]) <= 3600 for r in refused)
    # Three refusals, one audit event for this window.
    (event,) = events(db_url, "ratelimit")
    assert (event.reason, event.principal, event.store) == ("rate_limited.login.principal", "alice", "breakglass")
    assert "wrong-guess" not in str(event.detail)


def test_per_address_limit_covers_many_accounts(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        page = client.get("/login", headers={"Accept": "text/html"})
        csrf = csrf_from(page.text)
        statuses = [
            client.post(
                "/login/local/breakglass",
                data={"username": f"user{i}", "password": "x", "totp": "000000", "csrf": csrf},
            ).status_code
            for i in range(10)
        ]
    assert statuses[:8] == [401] * 8
    assert statuses[8:] == [429, 429]


def test_token_endpoint_is_limited_per_address(live: LiveServer) -> None:
    form = {"grant_type": "client_credentials"}
    with httpx.Client(base_url=live.url, timeout=30) as client:
        statuses = [client.post("/oauth2/token", data=form).status_code for _ in range(7)]
        last = client.post("/oauth2/token", data=form)
    assert statuses[:5] == [400] * 5
    assert statuses[5:] == [429, 429]
    assert last.json()["error"] == "rate_limited"
    assert last.headers["Cache-Control"] == "no-store" and int(last.headers["Retry-After"]) >= 1


def test_oversized_bodies_and_headers_are_refused_before_routing(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        declared = client.post("/oauth2/token", content=b"a=" + b"b" * 9000)
        assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"

        def chunks() -> Iterator[bytes]:
            for _ in range(20):
                yield b"x" * 1024

        streamed = client.post(
            "/login/local/breakglass",
            content=chunks(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert streamed.status_code == 413
        headers = client.get("/healthz", headers={"X-Padding": "p" * 5000})
        assert headers.status_code == 431
        assert client.get("/healthz").status_code == 200


def test_security_headers_on_pages(live: LiveServer) -> None:
    with httpx.Client(base_url=live.url, timeout=30) as client:
        page = client.get("/login", headers={"Accept": "text/html"})
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
    assert "frame-ancestors 'none'" in csp and "object-src 'none'" in csp
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert page.headers["Cross-Origin-Opener-Policy"] == "same-origin"
    # Plain HTTP on loopback: no HSTS (it is sent when public_url is https:// or the broker serves TLS).
    assert "Strict-Transport-Security" not in page.headers
