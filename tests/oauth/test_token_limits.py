"""The token endpoint's abuse budgets over real HTTP, on SQLite and PostgreSQL.

Failed token requests (a guessed client secret, refresh token or code) spend a tight budget of their own per
address and per claimed client id; successful machine traffic keeps the generous ``token.*`` budget; a
confidential client's requests count against ``token.principal``. A tripped limit is audited once per window.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from broker.app import create_app
from broker.aws.sts import Sts
from broker.context import Context
from broker.errors import InvalidClient, RateLimited
from broker.ratelimit import RateLimiter
from broker.services import build_services
from broker.settings import RateLimitSettings, Settings, load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent
from tests.support.processes import LiveServer
from tests.support.workload_tokens import TestIssuer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
PAYMENTS = "https://payments.internal"
SECRET = "gateway-secret-0123456789-0123456789-01234"


@pytest.fixture(scope="module")
def cluster() -> TestIssuer:
    return TestIssuer("https://k8s.limits.test")


def settings_for(make_config: Callable[..., dict[str, Any]], cluster: TestIssuer, **limits: str) -> Settings:
    config = make_config(
        rate_limits={"limits": limits},
        oauth={
            "workload_issuers": [
                {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
            ],
            "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
            "clients": [{"client_id": "gateway", "auth_method": "client_secret_basic", "client_secret": SECRET}],
        },
    )
    return load_settings(None, **config)


def start(make_config: Callable[..., dict[str, Any]], cluster: TestIssuer, **limits: str) -> LiveServer:
    return LiveServer(create_app(settings_for(make_config, cluster, **limits)))


@pytest.fixture
def live(make_config: Callable[..., dict[str, Any]], cluster: TestIssuer) -> Iterator[LiveServer]:
    with start(make_config, cluster, **{"token_failure.ip": "5/hour", "token_failure.principal": "50/hour"}) as s:
        yield s


def exchange(live: LiveServer, cluster: TestIssuer, auth: tuple[str, str] | None = None) -> httpx.Response:
    data = {
        "grant_type": GRANT,
        "subject_token": cluster.token(audience="broker"),
        "subject_token_type": TOKEN_TYPE_JWT,
    }
    return httpx.post(f"{live.url}/oauth2/token", data={**data, "audience": PAYMENTS}, auth=auth, timeout=30)


def ratelimit_events(database: Database) -> list[tuple[str, str]]:
    with database.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.event == "ratelimit").order_by(AuditEvent.seq))
        return [(e.reason, e.detail["limit"]) for e in rows]


def test_guessing_a_client_secret_gets_a_few_tries_then_429(
    live: LiveServer, cluster: TestIssuer, database: Database
) -> None:
    # Successful traffic does not spend the failure budget.
    for _ in range(8):
        assert exchange(live, cluster, auth=("gateway", SECRET)).status_code == 200
    for attempt in range(5):
        wrong = exchange(live, cluster, auth=("gateway", f"guess-{attempt}"))
        assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    for _ in range(3):
        refused = exchange(live, cluster, auth=("gateway", "guess-again"))
        assert refused.status_code == 429 and refused.json()["error"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 3600
    # The budget is spent for this address: even the right secret waits (the guesser cannot tell a hit).
    assert exchange(live, cluster, auth=("gateway", SECRET)).status_code == 429
    # Three refusals, one audit event.
    assert ratelimit_events(database) == [("rate_limited.token_failure.ip", "token_failure.ip")]


def test_failures_count_per_client_id_across_addresses(
    make_config: Callable[..., dict[str, Any]], cluster: TestIssuer
) -> None:
    """Guesses at one client spread over many addresses still stop (the token endpoint, real client checks)."""
    settings = settings_for(make_config, cluster)
    db = Database(settings.database_url)
    services = build_services(settings, sts=Sts(settings.aws))
    services.db = db
    limiter = RateLimiter(
        RateLimitSettings(limits={"token_failure.principal": "3/hour"}), keys=services.keys, audit=services.audit, db=db
    )
    services.ratelimiter = limiter
    oauth = services.oauth
    guess = "Basic " + base64.b64encode(b"gateway:guess").decode()
    items = [("grant_type", GRANT), ("subject_token", "x"), ("subject_token_type", TOKEN_TYPE_JWT)]
    try:
        for index in range(3):
            with pytest.raises(InvalidClient):
                oauth.endpoint.token(items, authorization=guess, ctx=Context(client_ip=f"198.51.100.{index}"))
        with pytest.raises(RateLimited) as limited:
            oauth.endpoint.token(items, authorization=guess, ctx=Context(client_ip="203.0.113.50"))
        assert limited.value.reason == "rate_limited.token_failure.principal"
        # Another client id has its own budget.
        other = "Basic " + base64.b64encode(b"other:guess").decode()
        with pytest.raises(InvalidClient):
            oauth.endpoint.token(items, authorization=other, ctx=Context(client_ip="203.0.113.50"))
    finally:
        oauth.close()
        db.dispose()


def test_a_confidential_clients_requests_count_against_the_per_principal_limit(
    make_config: Callable[..., dict[str, Any]], cluster: TestIssuer, database: Database
) -> None:
    with start(make_config, cluster, **{"token.principal": "3/hour"}) as server:
        for _ in range(3):
            assert exchange(server, cluster, auth=("gateway", SECRET)).status_code == 200
        limited = exchange(server, cluster, auth=("gateway", SECRET))
        assert limited.status_code == 429 and limited.json()["error"] == "rate_limited"
        # Requests without a client (per address only) are not this client's budget.
        assert exchange(server, cluster).status_code == 200
    assert ratelimit_events(database) == [("rate_limited.token.principal", "token.principal")]
