"""broker.store.issuance on SQLite and PostgreSQL: one row per credential handed out, found and revoked."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from broker.store import issuance
from broker.store.db import Database
from broker.store.models import Issuance
from tests.store.conftest import NOW, assert_refused_by_database

HOUR = timedelta(hours=1)


def fields(pid: int, key: str, *, role: str = "readonly", at: timedelta = timedelta(0)) -> dict[str, Any]:
    return {
        "principal_id": pid,
        "session_hmac": None,
        "role_name": role,
        "role_arn": f"arn:aws:iam::123456789012:role/{role}",
        "account": "123456789012",
        "channel": "console",
        "access_key_id": key,
        "source_identity": "ann",
        "role_session_name": "ann",
        "session_tags": {"team": "a"},
        "transitive_tag_keys": [],
        "policy_digest": None,
        "requested_duration_seconds": None,
        "granted_duration_seconds": 3600,
        "issued_at": NOW + at,
        "expires_at": NOW + at + HOUR,
        "client_ip": None,
        "user_agent": None,
    }


def test_insert_get_find_and_revoke(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    with database.transaction() as s:
        first = issuance.insert_issuance(s, **fields(ann, "ASIA1"))
        second = issuance.insert_issuance(s, **fields(ann, "ASIA2", role="admin", at=2 * HOUR))
        third = issuance.insert_issuance(s, **fields(bob, "ASIA3", at=2 * HOUR))
    with database.transaction() as s:
        row = issuance.get_issuance(s, issuance_id=first)
        assert row is not None and (row.access_key_id, row.session_tags, row.issued_at) == ("ASIA1", {"team": "a"}, NOW)
        assert issuance.get_issuance(s, issuance_id=third + 1000) is None
        assert [i.id for i in issuance.find_issuances(s)] == [third, second, first]
        assert [i.id for i in issuance.find_issuances(s, principal_id=ann)] == [second, first]
        assert [i.id for i in issuance.find_issuances(s, role_name="admin")] == [second]
        assert [i.id for i in issuance.find_issuances(s, live_at=NOW + HOUR * 1.5)] == [third, second]
        assert [i.id for i in issuance.find_issuances(s, since=NOW + HOUR)] == [third, second]
        assert [i.id for i in issuance.find_issuances(s, limit=1)] == [third]
        issuance.mark_issuances_revoked(s, ids=[first, third], now=NOW + HOUR / 4)
        issuance.mark_issuances_revoked(s, ids=[], now=NOW)
    with database.transaction() as s:
        assert [i.id for i in issuance.find_issuances(s, live_at=NOW + HOUR * 1.5)] == [second]
        revoked = issuance.get_issuance(s, issuance_id=first)
        assert revoked is not None and revoked.revoked_at == NOW + HOUR / 4
        # A second revocation keeps the first instant.
        issuance.mark_issuances_revoked(s, ids=[first], now=NOW + HOUR)
    with database.transaction() as s:
        again = issuance.get_issuance(s, issuance_id=first)
        assert again is not None and again.revoked_at == NOW + HOUR / 4


def test_access_key_ids_are_unique_in_the_database(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        issuance.insert_issuance(s, **fields(pid, "ASIA1"))
    assert_refused_by_database(database, Issuance, **fields(pid, "ASIA1"))


def test_usage_since_counts_per_role_and_principal(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    with database.transaction() as s:
        issuance.insert_issuance(s, **fields(ann, "K1"))
        issuance.insert_issuance(s, **fields(ann, "K2", at=HOUR))
        issuance.insert_issuance(s, **fields(bob, "K3", at=HOUR))
        issuance.insert_issuance(s, **fields(bob, "K4", role="admin", at=-HOUR))
    with database.transaction() as s:
        usage = sorted(issuance.usage_since(s, since=NOW))
    assert usage == [("readonly", ann, 2, NOW + HOUR), ("readonly", bob, 1, NOW + HOUR)]
