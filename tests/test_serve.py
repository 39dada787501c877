"""`broker serve` options: TLS without a terminating proxy, and forwarded headers only from trusted proxies."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import base_config
from tests.support.broker_process import BrokerProcess, migrate, write_config
from tests.support.saml_idp import make_keypair


def config(tmp_path: Path, sts_endpoint: str, **server: Any) -> Path:
    data = base_config(
        f"sqlite:///{tmp_path / 'broker.db'}",
        sts_endpoint,
        secret_key=secrets.token_urlsafe(40),
        rate_limits={"limits": {"token.ip": "2/hour"}},
        server=server,
    )
    path = write_config(tmp_path / "broker.yaml", data)
    migrate(path)
    return path


def token_statuses(url: str, forwarded_for: list[str], **kwargs: Any) -> list[int]:
    return [
        httpx.post(
            f"{url}/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"X-Forwarded-For": address},
            timeout=30,
            **kwargs,
        ).status_code
        for address in forwarded_for
    ]


def test_tls_serving_and_trusted_proxy(tmp_path: Path, sts_endpoint: str) -> None:
    key, cert = make_keypair("127.0.0.1")
    (tmp_path / "tls.key").write_bytes(key)
    (tmp_path / "tls.crt").write_bytes(cert)
    path = config(
        tmp_path,
        sts_endpoint,
        tls_cert_file=str(tmp_path / "tls.crt"),
        tls_key_file=str(tmp_path / "tls.key"),
        forwarded_allow_ips=["127.0.0.1/32"],
    )
    with BrokerProcess(path, scheme="https") as server:
        health = httpx.get(f"{server.url}/healthz", verify=False, timeout=30)
        assert health.status_code == 200
        assert health.headers["Strict-Transport-Security"].startswith("max-age=")
        assert "server" not in health.headers  # no uvicorn banner
        # The proxy (loopback, trusted) names the client: each forwarded address has its own budget.
        statuses = token_statuses(server.url, ["192.0.2.1", "192.0.2.1", "192.0.2.1", "192.0.2.2"], verify=False)
    assert statuses == [400, 400, 429, 400]


def test_forwarded_headers_ignored_without_trusted_proxies(tmp_path: Path, sts_endpoint: str) -> None:
    with BrokerProcess(config(tmp_path, sts_endpoint)) as server:
        # A client cannot escape its per-address budget by inventing X-Forwarded-For values.
        statuses = token_statuses(server.url, ["192.0.2.1", "192.0.2.2", "192.0.2.3"])
    assert statuses == [400, 400, 429]
