"""Shared set-up for the OIDC sign-in tests: real providers, a relay for forged tokens, a broker on a real port.

Three identity stores, each backed by a real ``oidc-provider`` process:

* ``corp``  - the company IdP (the everyday flow, step-up, logout);
* ``other`` - a second, independent IdP (mix-up tests, RFC 9207);
* ``forge`` - an IdP behind :class:`~tests.support.oidc_relay.OidcRelay`, whose ID tokens the tests rewrite.

The broker's port is chosen once per module so the providers can register its redirect URIs; every test then
starts its own broker (fresh database, fresh caches) on that port.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from sqlalchemy import func, select

from broker.app import create_app
from broker.settings import load_settings
from broker.store.db import Database
from tests.support.federation_standin import FederationStandIn
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.oidc_relay import OidcRelay
from tests.support.processes import LiveServer, free_port
from tests.support.records import Records

CLIENT_ID = "broker"
CLIENT_SECRET = "broker-client-secret-0123456789-0123456789"
ACR_MFA = "urn:example:acr:mfa"
ACR_HWK = "urn:example:acr:hwk"

ACCOUNTS: dict[str, Any] = {
    # engineering + admins, MFA; can step up to a hardware key (phishing-resistant).
    "alice": {
        "password": "alice-pw",
        "claims": {
            "sub": "u-alice",
            "email": "alice@example.test",
            "email_verified": True,
            "groups": ["engineering", "admins"],
            "amr": ["pwd", "mfa"],
            "acr": ACR_MFA,
        },
        "step_up": {"acr": ACR_HWK, "amr": ["hwk"]},
    },
    # engineering, password only.
    "bob": {
        "password": "bob-pw",
        "claims": {"sub": "u-bob", "email": "bob@example.test", "groups": ["engineering"], "amr": ["pwd"]},
    },
    # no group that grants a role.
    "carol": {
        "password": "carol-pw",
        "claims": {"sub": "u-carol", "email": "carol@example.test", "groups": ["sales"], "amr": ["pwd", "mfa"]},
    },
    # admins with MFA but no hardware key: the IdP cannot step up.
    "dave": {
        "password": "dave-pw",
        "claims": {
            "sub": "u-dave",
            "email": "dave@example.test",
            "groups": ["admins"],
            "amr": ["pwd", "mfa"],
            "acr": ACR_MFA,
        },
    },
}


def provider_config(broker_url: str, store: str, **extra: Any) -> dict[str, Any]:
    return {
        "clients": [
            {
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "redirect_uris": [f"{broker_url}/oidc/{store}/callback"],
                "post_logout_redirect_uris": [f"{broker_url}/signed-out"],
                "grant_types": ["authorization_code"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
            }
        ],
        "accounts": ACCOUNTS,
        **extra,
    }


def people(spec: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Provider accounts from ``{name: {"groups": [...], "amr": [...]}}``: password ``<name>-pw``, sub ``u-<name>``."""
    return {
        name: {
            "password": f"{name}-pw",
            "claims": {"sub": f"u-{name}", "email": f"{name}@example.test", "groups": who["groups"], "amr": who["amr"]},
        }
        for name, who in spec.items()
    }


def store_config(name: str, issuer: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "oidc",
        "name": name,
        "display_name": f"{name.title()} sign-in",
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "scopes": ["openid", "email", "profile", "groups"],
        "amr": {"mfa": ["mfa"], "phishing_resistant": ["hwk"]},
        "acr": {"mfa": [ACR_MFA], "phishing_resistant": [ACR_HWK]},
        "step_up_acr_values": {"phishing_resistant": [ACR_HWK]},
        **extra,
    }


@dataclass
class Peers:
    broker_port: int
    corp: OidcProvider
    other: OidcProvider
    forge_op: OidcProvider
    relay: OidcRelay

    @property
    def broker_url(self) -> str:
        return f"http://127.0.0.1:{self.broker_port}"

    def stores(self) -> list[dict[str, Any]]:
        return [
            store_config("corp", self.corp.issuer),
            store_config("other", self.other.issuer),
            store_config("forge", self.relay.url),
        ]


@contextlib.contextmanager
def start_peers() -> Iterator[Peers]:
    broker_url = f"http://127.0.0.1:{(port := free_port())}"
    relay = OidcRelay()
    with OidcProvider() as corp, OidcProvider() as other, OidcProvider() as forge_op:
        corp.start(provider_config(broker_url, "corp"))
        other.start(provider_config(broker_url, "other"))
        forge_op.start({**provider_config(broker_url, "forge"), "issuer": relay.url})
        relay.start(f"http://127.0.0.1:{forge_op.port}")
        try:
            yield Peers(port, corp, other, forge_op, relay)
        finally:
            relay.stop()


@dataclass
class Running(Records):
    url: str
    db_url: str
    standin: FederationStandIn

    def session_count(self) -> int:
        from broker.store.models import BrokerSession

        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                return int(session.scalar(select(func.count()).select_from(BrokerSession)) or 0)
        finally:
            db.dispose()


@contextlib.contextmanager
def running_broker(peers: Peers, config: dict[str, Any], sts_endpoint: str) -> Iterator[Running]:
    """Start the broker (real uvicorn on the module's port) with a console federation stand-in."""
    with FederationStandIn(sts_endpoint) as standin:
        aws = {**config["aws"], "federation_endpoint": standin.url}
        settings = load_settings(None, **{**config, "public_url": peers.broker_url, "aws": aws})
        with LiveServer(create_app(settings), port=peers.broker_port):
            yield Running(peers.broker_url, config["database_url"], standin)


def callback_url(resp: httpx.Response) -> str:
    location = resp.headers["location"]
    assert "/callback" in location, location
    return location


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def start_login(browser: httpx.Client, broker_url: str, store: str, next_path: str = "/") -> str:
    """GET /login/{store}; returns the IdP authorization URL the broker redirected to."""
    resp = browser.get(f"{broker_url}/login/{store}", params={"next": next_path})
    assert resp.status_code == 303, resp.text
    return resp.headers["location"]


def idp_callback(browser: httpx.Client, authorize_url: str, user: str) -> str:
    """Sign in at the IdP; returns the callback URL it sends the browser to (not yet followed)."""
    return callback_url(login_over_http(browser, authorize_url, user, ACCOUNTS[user]["password"]))


def sign_in(browser: httpx.Client, broker_url: str, store: str, user: str, next_path: str = "/") -> httpx.Response:
    """The whole sign-in as a browser does it; returns the broker's answer to the callback."""
    return browser.get(idp_callback(browser, start_login(browser, broker_url, store, next_path), user))


def csrf_of(page: str) -> str:
    return page.split('name="csrf" value="', 1)[1].split('"', 1)[0]
