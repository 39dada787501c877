"""A broker with a break-glass account, an injectable clock, and helpers to drive /mfa over real HTTP."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
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
from tests.support.clock import MovableClock
from tests.support.config import break_glass_account, break_glass_store
from tests.support.portal import csrf_from, login_local
from tests.support.processes import LiveServer, free_port

PASSWORD = "correct horse battery staple"
BREAK_GLASS_TOTP = pyotp.random_base32()
PASSWORD_HASH = hash_password(PASSWORD)
HTML = {"Accept": "text/html"}


def mfa_config(make_config: Callable[..., dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    config = make_config(
        identity_stores=[
            break_glass_store(
                break_glass_account(
                    "alice", password_hash=PASSWORD_HASH, totp_secret=BREAK_GLASS_TOTP, groups=["engineering", "admins"]
                ),
                break_glass_account("bob", password_hash=PASSWORD_HASH, totp_secret=BREAK_GLASS_TOTP),
            )
        ],
        # Members of admins may approve an operator reset (with a fresh phishing-resistant sign-in).
        mfa={"operators": [{"groups": ["admins"]}]},
        **overrides,
    )
    # A sensitive role: MFA proven within the last five minutes.
    config["roles"].append(
        {
            "name": "deploy",
            "role_arn": "arn:aws:iam::123456789012:role/Deploy",
            "grant": [{"groups": ["engineering"]}],
            "mfa": "mfa",
            "mfa_max_age_minutes": 5,
        }
    )
    return config


@dataclass
class Running:
    url: str
    db_url: str
    clock: MovableClock
    config: dict[str, Any]

    def audit(self, event: str | None = None) -> list[AuditEvent]:
        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                query = select(AuditEvent).order_by(AuditEvent.seq)
                if event:
                    query = query.where(AuditEvent.event == event)
                rows = list(session.scalars(query).all())
                session.expunge_all()
                return rows
        finally:
            db.dispose()

    def code(self, secret: str, steps: int = 0) -> str:
        return pyotp.TOTP(secret).at(self.clock() + timedelta(seconds=30 * steps))


@pytest.fixture
def running(make_config: Callable[..., dict[str, Any]], db_url: str) -> Iterator[Running]:
    clock = MovableClock()
    port = free_port()
    config = {**mfa_config(make_config), "public_url": f"http://localhost:{port}"}
    with LiveServer(create_app(load_settings(None, **config), clock=clock), port=port):
        yield Running(f"http://127.0.0.1:{port}", db_url, clock, config)


@pytest.fixture
def client(running: Running) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url, follow_redirects=False, timeout=30) as c:
        yield c


def sign_in(client: httpx.Client, running: Running, user: str = "alice") -> None:
    code = pyotp.TOTP(BREAK_GLASS_TOTP).at(running.clock())
    response = login_local(client, store="breakglass", username=user, password=PASSWORD, code=code)
    assert response.status_code == 303, response.text


def csrf(client: httpx.Client, path: str = "/mfa") -> str:
    page = client.get(path, headers=HTML)
    assert page.status_code == 200, page.text
    return csrf_from(page.text)


def enrol_totp(client: httpx.Client, running: Running) -> tuple[str, list[str]]:
    """Add an authenticator app as a person does; returns its secret (read off the page) and recovery codes."""
    page = client.post("/mfa/totp", data={"csrf": csrf(client), "name": "phone"}, headers=HTML)
    assert page.status_code == 200, page.text
    assert page.headers["cache-control"] == "no-store"
    assert 'src="data:image/svg+xml;base64,' in page.text
    secret = re.search(r'<code id="totp-secret">([A-Z2-7]+)</code>', page.text)
    factor_id = re.search(r'name="factor_id" value="(\d+)"', page.text)
    assert secret and factor_id
    done = client.post(
        "/mfa/totp/confirm",
        data={"csrf": csrf_from(page.text), "factor_id": factor_id.group(1), "code": running.code(secret.group(1))},
        headers=HTML,
    )
    assert done.status_code == 200, done.text
    codes = re.findall(r"<li><code>([a-z0-9-]+)</code></li>", done.text)
    return secret.group(1), codes


def post_form(client: httpx.Client, path: str, **data: str) -> httpx.Response:
    return client.post(path, data={"csrf": csrf(client, "/"), **data}, headers=HTML)
