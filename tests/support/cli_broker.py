"""A broker for the credential-helper tests: break-glass account ``alice``, a movable clock, a real socket.

The clock is the broker's own (``create_app(settings, clock=...)``), so tests can let device codes, codes and
sign-ins expire without sleeping; AWS (moto's STS) keeps real time.
"""

from __future__ import annotations

import contextlib
import html
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pyotp

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from tests.support.clock import MovableClock
from tests.support.config import break_glass_account, break_glass_store
from tests.support.portal import login_local
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records

PASSWORD = "correct horse battery staple"
TOTP_SECRET = pyotp.random_base32()
PASSWORD_HASH = hash_password(PASSWORD)
_HIDDEN = re.compile(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)">')


def local_store() -> dict[str, Any]:
    account = break_glass_account(
        "alice", password_hash=PASSWORD_HASH, totp_secret=TOTP_SECRET, groups=["engineering", "admins"]
    )
    return break_glass_store(account)


@dataclass
class CliBroker(Records):
    url: str
    db_url: str
    clock: MovableClock
    _totp_steps: set[int] = field(default_factory=set)

    def totp(self) -> str:
        """A TOTP code not used before (each time step works once): wait for the next step if needed."""
        while True:
            step = int(time.time() // 30)
            if step not in self._totp_steps:
                self._totp_steps.add(step)
                return pyotp.TOTP(TOTP_SECRET).at(time.time())
            time.sleep(0.5)

    def browser(self, next_path: str = "/") -> httpx.Client:
        """An httpx 'browser' signed in as alice with the break-glass account."""
        client = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        response = login_local(
            client, store="breakglass", username="alice", password=PASSWORD, code=self.totp(), next_path=next_path
        )
        assert response.status_code == 303, response.text
        return client


def hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


@contextlib.contextmanager
def cli_broker(config: dict[str, Any], *, port: int | None = None) -> Iterator[CliBroker]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    clock = MovableClock()
    oauth = {
        **config.get("oauth", {}),
        "cli": {"device_poll_interval_seconds": 1, **config.get("oauth", {}).get("cli", {})},
    }
    settings = load_settings(None, **{**config, "public_url": url, "identity_stores": [local_store()], "oauth": oauth})
    with LiveServer(create_app(settings, clock=clock), port=port):
        yield CliBroker(url, config["database_url"], clock)
