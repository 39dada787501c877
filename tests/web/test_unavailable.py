"""Every 503 says when to retry (RFC 9110 section 10.2.3), on SQLite and PostgreSQL: the token endpoint (JSON),
the portal (HTML) and the readiness probe, when the audit trail or the schema is not there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from broker.app import create_app
from broker.settings import load_settings
from broker.store.db import Database
from tests.support.audit_outage import audit_refused
from tests.support.processes import LiveServer
from tests.support.workload_tokens import TestIssuer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
PAYMENTS = "https://payments.internal"


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]]) -> Iterator[tuple[LiveServer, TestIssuer]]:
    cluster = TestIssuer("https://k8s.unavailable.test")
    config = make_config(
        oauth={
            "workload_issuers": [
                {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
            ],
            "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
        }
    )
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield server, cluster


def test_token_endpoint_503_carries_retry_after(
    live: tuple[LiveServer, TestIssuer], database: Database, db_url: str
) -> None:
    server, cluster = live
    data = {
        "grant_type": GRANT,
        "subject_token": cluster.token(audience="broker"),
        "subject_token_type": TOKEN_TYPE_JWT,
    }
    with audit_refused(database, db_url):
        down = httpx.post(f"{server.url}/oauth2/token", data={**data, "audience": PAYMENTS}, timeout=30)
    assert down.status_code == 503 and down.headers["retry-after"] == "60"
    assert down.json()["error"] == "temporarily_unavailable" and "access_token" not in down.json()
    # Back once the audit trail is.
    data["subject_token"] = cluster.token(audience="broker")
    assert httpx.post(f"{server.url}/oauth2/token", data={**data, "audience": PAYMENTS}).status_code == 200


def test_readiness_503_carries_retry_after(live: tuple[LiveServer, TestIssuer], database: Database) -> None:
    server, _ = live
    with database.engine.begin() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))  # behind this release
    try:
        probe = httpx.get(f"{server.url}/readyz", timeout=30)
    finally:
        with database.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": version})
    assert probe.status_code == 503 and probe.headers["retry-after"] == "60"
    assert "broker db upgrade" in probe.json()["detail"]
