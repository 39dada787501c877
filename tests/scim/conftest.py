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
import pytest

from broker.app import create_app
from broker.scim.service import token_hash
from broker.settings import load_settings
from tests.support.cli_broker import MovableClock, local_store
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
        config = make_config(**overrides.pop("config", {}))
        settings = load_settings(None, **scim_config(config, url, tokens, **overrides))
        clock = MovableClock()
        with LiveServer(create_app(settings, clock=clock), port=port):
            yield ScimBroker(url, config["database_url"], tokens, clock)

    return start


@pytest.fixture
def scim_broker(scim_broker_factory: Callable[..., Any]) -> Iterator[ScimBroker]:
    with scim_broker_factory() as broker:
        yield broker


def new_user(user_name: str, **extra: Any) -> dict[str, Any]:
    return {"schemas": [USER_SCHEMA], "userName": user_name, "active": True, **extra}


def patch(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"schemas": [PATCH_SCHEMA], "Operations": list(operations)}
