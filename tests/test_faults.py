"""Dependencies failing mid-flow: PostgreSQL, moto's STS and the identity providers behind a TCP proxy that
the tests cut and restore. The contract: 503 (with Retry-After where waiting helps), never credentials
without their audit row, STS failures audited, clear pages for people, and recovery without a restart.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pyotp
import pytest
from sqlalchemy import select

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.conftest import _reset_postgres, base_config
from tests.support.loopback import LoopbackServer
from tests.support.oidc_flow import provider_config, store_config
from tests.support.oidc_provider import OidcProvider
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import LiveServer, free_port
from tests.support.tcp_proxy import TcpProxy
from tests.support.workload_tokens import TestIssuer

PASSWORD = "correct horse battery staple"
TOTP = pyotp.random_base32()
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
PAYMENTS = "https://payments.internal"


@dataclass
class Rig:
    url: str
    db_url: str
    db: TcpProxy
    sts: TcpProxy
    jwks: TcpProxy
    cluster: TestIssuer

    def audit(self) -> list[AuditEvent]:
        database = Database(self.db_url)
        try:
            with database.transaction() as s:
                return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all())
        finally:
            database.dispose()

    def issuances(self) -> int:
        database = Database(self.db_url)
        try:
            with database.transaction() as s:
                return len(s.scalars(select(Issuance)).all())
        finally:
            database.dispose()


@pytest.fixture
def rig(postgres_server_url: str, sts_endpoint: str) -> Iterator[Rig]:
    _reset_postgres(postgres_server_url)
    pg = urlsplit(postgres_server_url)
    cluster = TestIssuer("https://k8s.faults.test")
    with (
        TcpProxy(pg.port or 5432) as db_proxy,
        TcpProxy(urlsplit(sts_endpoint).port or 80) as sts_proxy,
        LoopbackServer() as jwks_host,
    ):
        jwks_uri = jwks_host.serve_json("/jwks", cluster.jwks())
        with TcpProxy(jwks_host.port) as jwks_proxy:
            proxied_db = postgres_server_url.replace(f":{pg.port}/", f":{db_proxy.port}/")
            config: dict[str, Any] = base_config(
                proxied_db,
                f"http://127.0.0.1:{sts_proxy.port}",
                secret_key=secrets.token_urlsafe(40),
                identity_stores=[
                    {
                        "type": "local",
                        "name": "breakglass",
                        "accounts": [
                            {
                                "username": "alice",
                                "password_hash": hash_password(PASSWORD),
                                "totp_secret": TOTP,
                                "groups": ["engineering"],
                            }
                        ],
                    }
                ],
                oauth={
                    "workload_issuers": [
                        {
                            "name": "k8s",
                            "issuer": cluster.issuer,
                            "jwks_uri": jwks_uri.replace(f":{jwks_host.port}/", f":{jwks_proxy.port}/"),
                            "audiences": ["broker"],
                            "jwks_cache_seconds": 10,
                            "http_timeout_seconds": 1,
                        }
                    ],
                    "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
                },
            )
            config["aws"].update(connect_timeout_seconds=1, read_timeout_seconds=2, max_attempts=1)
            with LiveServer(create_app(load_settings(None, **config))) as server:
                yield Rig(server.url, postgres_server_url, db_proxy, sts_proxy, jwks_proxy, cluster)


def signed_in(rig: Rig) -> httpx.Client:
    client = httpx.Client(base_url=rig.url, timeout=30, headers={"Accept": "text/html"})
    response = login_local(client, store="breakglass", username="alice", password=PASSWORD, code=pyotp.TOTP(TOTP).now())
    assert response.status_code == 303, response.text
    return client


def credentials(client: httpx.Client) -> httpx.Response:
    portal = client.get("/")
    assert portal.status_code == 200, portal.text
    return client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)})


def test_database_down_then_back(rig: Rig) -> None:
    with closing(signed_in(rig)) as client:
        portal = client.get("/")
        rig.db.cut()
        down = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)})
        assert down.status_code == 503
        assert "AWS_SECRET_ACCESS_KEY" not in down.text
        assert httpx.get(f"{rig.url}/readyz").status_code == 503
        assert httpx.get(f"{rig.url}/healthz").status_code == 200  # alive: do not restart, just stop routing
        rig.db.restore()
        # The pool reconnects by itself (pre-ping): no restart.
        deadline = time.monotonic() + 15
        while httpx.get(f"{rig.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        page = credentials(client)
    assert page.status_code == 200
    assert env_credentials(page.text)["AWS_SECRET_ACCESS_KEY"]
    assert rig.issuances() == 1


def test_database_lost_between_sts_and_audit_row(rig: Rig) -> None:
    """STS answered, the audit row cannot commit: the credentials never leave the broker."""
    with closing(signed_in(rig)) as client:
        portal = client.get("/")
        rig.sts.latency = 1.0
        result: dict[str, httpx.Response] = {}

        def ask() -> None:
            result["r"] = client.post("/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)})

        thread = threading.Thread(target=ask)
        thread.start()
        time.sleep(0.5)  # the request is now waiting on STS, its session check already done
        rig.db.cut()
        thread.join(timeout=30)
        rig.db.restore()
        rig.sts.latency = 0
    response = result["r"]
    assert response.status_code == 503
    assert "AWS_SECRET_ACCESS_KEY" not in response.text and "aws_session_token" not in response.text.lower()
    assert rig.issuances() == 0


def test_sts_slow_is_bounded_audited_and_recovers(rig: Rig) -> None:
    with closing(signed_in(rig)) as client:
        rig.sts.latency = 5.0
        started = time.monotonic()
        slow = credentials(client)
        took = time.monotonic() - started
        rig.sts.latency = 0
        assert slow.status_code == 503 and int(slow.headers["Retry-After"]) >= 1
        assert took < 4.5  # read_timeout 2 s, one attempt: bounded, not the peer's 5 s
        assert "AWS_SECRET_ACCESS_KEY" not in slow.text
        assert rig.audit()[-1].reason == "sts_unavailable"
        assert credentials(client).status_code == 200


def test_sts_down_is_audited_and_recovers(rig: Rig) -> None:
    with closing(signed_in(rig)) as client:
        rig.sts.cut()
        down = credentials(client)
        assert down.status_code == 503 and int(down.headers["Retry-After"]) >= 1
        event = rig.audit()[-1]
        assert (event.event, event.outcome, event.reason) == ("credentials", "denied", "sts_unavailable")
        rig.sts.restore()
        assert credentials(client).status_code == 200
    assert rig.issuances() == 1


def test_jwks_down_uses_cached_keys_until_they_expire(rig: Rig) -> None:
    def exchange() -> httpx.Response:
        token = rig.cluster.token(audience="broker")
        data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": TOKEN_TYPE_JWT}
        return httpx.post(f"{rig.url}/oauth2/token", data={**data, "audience": PAYMENTS}, timeout=30)

    assert exchange().status_code == 200
    rig.jwks.cut()
    assert exchange().status_code == 200  # fresh cache
    time.sleep(11)
    assert exchange().status_code == 200  # stale, issuer unreachable: keys fetched moments ago still serve
    time.sleep(10)
    down = exchange()
    assert down.status_code == 503 and int(down.headers["Retry-After"]) >= 1
    assert down.json()["error"] == "temporarily_unavailable"
    assert rig.audit()[-1].reason == "workload.jwks_unavailable"
    rig.jwks.restore()
    assert exchange().status_code == 200


def test_identity_provider_down_shows_a_page_and_recovers(postgres_server_url: str, sts_endpoint: str) -> None:
    _reset_postgres(postgres_server_url)
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    with OidcProvider() as op:
        upstream_port = free_port()
        with TcpProxy(upstream_port) as proxy:
            issuer = f"http://127.0.0.1:{proxy.port}"
            op.start({**provider_config(public, "corp"), "port": upstream_port, "issuer": issuer})
            config = base_config(
                postgres_server_url,
                sts_endpoint,
                public_url=public,
                identity_stores=[store_config("corp", issuer, timeout_seconds=2)],
            )
            with (
                LiveServer(create_app(load_settings(None, **config)), port=port),
                httpx.Client(base_url=public, timeout=30, headers={"Accept": "text/html"}) as browser,
            ):
                proxy.cut()
                page = browser.get("/login/corp")
                assert page.status_code == 503
                assert "text/html" in page.headers["content-type"]
                assert "not answering" in page.text
                proxy.restore()
                assert browser.get("/login/corp").status_code == 303
