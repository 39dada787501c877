"""``broker.ratelimit`` against real counter stores: in-process memory, and the Redis at 127.0.0.1:6379."""

from __future__ import annotations

import secrets
import socket

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from broker.audit import AuditTrail
from broker.context import Context
from broker.errors import RateLimited
from broker.keys import Keys
from broker.ratelimit import DEFAULT_LIMITS, RateLimiter
from broker.settings import RateLimitSettings
from broker.store.db import Database
from broker.store.models import AuditEvent

REDIS = "redis://127.0.0.1:6379"


def limiter(database: Database, storage: str = "memory://", **limits: str) -> RateLimiter:
    # A fresh key per test: counters live under HMAC keys, so tests sharing one Redis never collide.
    keys = Keys(SecretStr(secrets.token_urlsafe(32)))
    settings = RateLimitSettings(storage_url=storage, limits=limits)
    return RateLimiter(settings, keys=keys, audit=AuditTrail(keys), db=database)


def ratelimit_events(database: Database) -> list[AuditEvent]:
    with database.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.event == "ratelimit")).all())


@pytest.mark.parametrize("storage", ["memory://", REDIS])
def test_limit_refuses_with_retry_after_and_audits_once_per_window(database: Database, storage: str) -> None:
    limit = limiter(database, storage, **{"login.principal": "3/hour"})
    ctx = Context(client_ip="192.0.2.7", request_id="r1")
    for _ in range(3):
        limit.hit("login", per="principal", key="bg:alice", ctx=ctx)
    refusals = []
    for _ in range(5):
        with pytest.raises(RateLimited) as caught:
            limit.hit("login", per="principal", key="bg:alice", ctx=ctx)
        refusals.append(caught.value)
    assert all(e.status == 429 and 1 <= (e.retry_after or 0) <= 3600 for e in refusals)
    assert refusals[0].reason == "rate_limited.login.principal"
    # Five refusals, one audit event: a flood cannot serialize on the audit chain head.
    (event,) = ratelimit_events(database)
    assert (event.outcome, event.reason, event.principal, event.client_ip) == (
        "denied",
        "rate_limited.login.principal",
        "bg:alice",
        "192.0.2.7",
    )
    assert event.detail["limit"] == "login.principal"
    # Another principal has its own budget.
    limit.hit("login", per="principal", key="bg:bob", ctx=ctx)


def test_redis_counters_are_shared_between_limiters(database: Database) -> None:
    keys = Keys(SecretStr(secrets.token_urlsafe(32)))
    settings = RateLimitSettings(storage_url=REDIS, limits={"token.ip": "4/hour"})
    one = RateLimiter(settings, keys=keys, audit=AuditTrail(keys), db=database)
    two = RateLimiter(settings, keys=keys, audit=AuditTrail(keys), db=database)
    for index in range(4):
        (one if index % 2 else two).hit("token", per="ip", key="198.51.100.1")
    with pytest.raises(RateLimited):
        one.hit("token", per="ip", key="198.51.100.1")
    with pytest.raises(RateLimited):
        two.hit("token", per="ip", key="198.51.100.1")


def test_redis_down_falls_back_to_process_counters(database: Database) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once we leave: nothing listens there
    limit = limiter(database, f"redis://127.0.0.1:{port}", **{"login.ip": "2/hour"})
    limit.hit("login", per="ip", key="203.0.113.9")
    limit.hit("login", per="ip", key="203.0.113.9")
    with pytest.raises(RateLimited):
        limit.hit("login", per="ip", key="203.0.113.9")


def test_disabled_limiter_counts_nothing(database: Database) -> None:
    keys = Keys(SecretStr(secrets.token_urlsafe(32)))
    limit = RateLimiter(
        RateLimitSettings(enabled=False, limits={"login.ip": "1/hour"}), keys=keys, audit=AuditTrail(keys), db=database
    )
    for _ in range(5):
        limit.hit("login", per="ip", key="x")


def test_unknown_limit_name_is_a_programming_error(database: Database) -> None:
    with pytest.raises(KeyError):
        limiter(database).hit("nonesuch", per="ip", key="x")
    assert all(key.endswith((".ip", ".principal")) for key in DEFAULT_LIMITS)
