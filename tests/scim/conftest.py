"""A live broker serving ``/scim/v2`` on a real socket, with three provisioning clients.

* ``idp`` provisions the break-glass store ``breakglass`` (account ``alice``) and may manage any group;
* ``hr`` provisions ``contractors`` and may manage users only;
* ``partners`` provisions ``partners`` and may manage the group ``partner-readers`` only.

Grant rules name provisioned groups: ``readonly`` goes to ``engineering``, ``admin`` to ``admins``.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
import pytest

from broker.app import create_app
from broker.scim.service import token_hash
from broker.settings import load_settings
from tests.support.cli_broker import PASSWORD, TOTP_SECRET, local_store
from tests.support.clock import MovableClock
from tests.support.portal import csrf_from, login_local
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records

SCIM_JSON = "application/scim+json"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
PATCH_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:PatchOp"
ERROR_SCHEMA = "urn:ietf:params:scim:api:messages:2.0:Error"


@dataclass
class ScimBroker(Records):
    url: str
    db_url: str
    tokens: dict[str, str]
    clock: MovableClock
    config: dict[str, Any]

    @property
    def base(self) -> str:
        return f"{self.url}/scim/v2"

    def client(self, name: str = "idp") -> httpx.Client:
        """An HTTP client authenticated as one provisioning client."""
        return httpx.Client(
            base_url=self.base,
            headers={"Authorization": f"Bearer {self.tokens[name]}", "Content-Type": SCIM_JSON},
            timeout=30,
        )

    def events(self, after: int, event: str = "scim") -> list[Any]:
        return [e for e in self.audit(after) if e.event == event]

    def sign_in(self, username: str = "alice") -> httpx.Client:
        """A browser signed in with the break-glass account (a fresh TOTP step on the broker's clock)."""
        self.clock.advance(30)
        code = pyotp.TOTP(TOTP_SECRET).at(self.clock().timestamp())
        browser = httpx.Client(base_url=self.url, follow_redirects=False, timeout=30)
        response = login_local(
            browser, store="breakglass", username=username, password=PASSWORD, code=code, next_path="/"
        )
        browser.headers["X-Test-Sign-In"] = str(response.status_code)
        return browser

    @staticmethod
    def credentials(browser: httpx.Client, role: str) -> httpx.Response:
        """POST /credentials for a role from the portal page (with its CSRF token)."""
        page = browser.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200, page.status_code
        return browser.post(
            "/credentials", data={"role": role, "csrf": csrf_from(page.text)}, headers={"Accept": "text/html"}
        )


def scim_clients(tokens: dict[str, str]) -> list[dict[str, Any]]:
    return [
        {"name": "idp", "token_hash": token_hash(tokens["idp"]), "store": "breakglass", "groups": True},
        {"name": "hr", "token_hash": token_hash(tokens["hr"]), "store": "contractors"},
        {
            "name": "partners",
            "token_hash": token_hash(tokens["partners"]),
            "store": "partners",
            "groups": True,
            "allowed_groups": ["partner-readers"],
        },
    ]


def scim_config(config: dict[str, Any], url: str, tokens: dict[str, str], **scim: Any) -> dict[str, Any]:
    stores = [
        local_store(),
        {"type": "local", "name": "contractors", "accounts": []},
        {"type": "local", "name": "partners", "accounts": []},
    ]
    return {
        **config,
        "public_url": url,
        "identity_stores": stores,
        "scim": {"clients": scim_clients(tokens), **scim},
    }


@pytest.fixture
def scim_broker_factory(make_config: Callable[..., dict[str, Any]]) -> Callable[..., Any]:
    import contextlib

    @contextlib.contextmanager
    def start(**overrides: Any) -> Iterator[ScimBroker]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        tokens = {name: secrets.token_urlsafe(36) for name in ("idp", "hr", "partners")}
        config = scim_config(make_config(**overrides.pop("config", {})), url, tokens, **overrides)
        settings = load_settings(None, **config)
        clock = MovableClock()
        with LiveServer(create_app(settings, clock=clock), port=port):
            yield ScimBroker(url, config["database_url"], tokens, clock, config)

    return start


@pytest.fixture
def scim_broker(scim_broker_factory: Callable[..., Any]) -> Iterator[ScimBroker]:
    with scim_broker_factory() as broker:
        yield broker


def new_user(user_name: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER_SCHEMA], "userName": user_name, "active": True, **extra}


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}
