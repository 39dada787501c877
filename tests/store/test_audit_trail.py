"""broker.store.audit_trail on SQLite and PostgreSQL: events, the segments that seal them, published digests."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import delete, insert

from broker.store import audit_trail
from broker.store.db import Database
from broker.store.models import AuditDigest, AuditEvent, AuditSegment
from tests.store.conftest import NOW, assert_refused_by_database

INSERTED = ("event_id", "occurred_at", "event", "outcome", "reason", "principal", "store", "detail", "writer", "mac")


def event(name: str = "login", *, principal: str = "ann", outcome: str = "ok", at: int = 0) -> dict[str, Any]:
    return {
        "event_id": str(uuid.uuid4()),
        "occurred_at": NOW + timedelta(minutes=at),
        "event": name,
        "outcome": outcome,
        "reason": f"{name}_{outcome}",
        "principal": principal,
        "store": "corp",
        "detail": {"n": at},
        "writer": "w1",
    }


@pytest.fixture(autouse=True)
def no_segments(database: Database) -> None:
    """Start without segments on both backends (a fresh SQLite file holds the migration's segment 0)."""
    with database.transaction() as s:
        s.execute(delete(AuditSegment))


def append(database: Database, **kwargs: Any) -> int:
    with database.transaction() as s:
        row = audit_trail.append_audit_event(s, fields=event(**kwargs), mac=lambda r: "m:" + r.event, inserted=INSERTED)
        return row.seq


def test_append_and_insert_return_increasing_seq(database: Database) -> None:
    first = append(database)
    with database.transaction() as s:
        second = audit_trail.insert_audit_event(s, values={**event("logout"), "mac": "m"})
    assert second > first
    with database.transaction() as s:
        rows = list(audit_trail.iter_audit_events(s, batch=1))
        assert [(r.seq, r.event, r.mac, r.segment) for r in rows] == [
            (first, "login", "m:login", None),
            (second, "logout", "m", None),
        ]
        assert audit_trail.duplicate_audit_event_ids(s) == []


def test_event_ids_are_unique_in_the_database(database: Database) -> None:
    fields = event()
    with database.transaction() as s:
        audit_trail.insert_audit_event(s, values=fields)
    assert_refused_by_database(database, AuditEvent, **{**fields, "detail": {}})


def test_seal_events_into_segments(database: Database) -> None:
    seqs = [append(database, at=i) for i in range(3)]
    with database.transaction() as s:
        assert audit_trail.latest_audit_segment(s) is None
        zero = audit_trail.add_audit_segment(
            s, number=0, count=0, prev_hash="g", hash="g", sealed_at=NOW, seal=lambda seg: f"seal:{seg.number}"
        )
        assert zero.seal == "seal:0"
        assert [r.seq for r in audit_trail.unsealed_audit_events(s, limit=2)] == seqs[:2]
        assert [r.seq for r in audit_trail.iter_unsealed_audit_events(s, batch=1)] == seqs
        placements = [{"seq": seq, "segment": 1, "position": 1 - i, "chain": f"c{i}"} for i, seq in enumerate(seqs[:2])]
        audit_trail.seal_audit_events(s, placements=placements)
        audit_trail.seal_audit_events(s, placements=[])
        audit_trail.add_audit_segment(
            s, number=1, count=2, prev_hash="g", hash="c1", sealed_at=NOW, seal=lambda seg: f"seal:{seg.hash}"
        )
    with database.transaction() as s:
        head = audit_trail.latest_audit_segment(s)
        assert head is not None and (head.number, head.count, head.seal) == (1, 2, "seal:c1")
        assert audit_trail.get_audit_segment(s, number=7) is None
        assert [g.number for g in audit_trail.iter_audit_segments(s, batch=1)] == [0, 1]
        # Position order within the segment, not insertion order.
        assert [(r.seq, r.chain) for r in audit_trail.iter_segment_events(s, segment=1, batch=1)] == [
            (seqs[1], "c1"),
            (seqs[0], "c0"),
        ]
        assert [r.seq for r in audit_trail.unsealed_audit_events(s, limit=10)] == [seqs[2]]


def test_a_segment_number_and_a_place_in_it_are_unique_in_the_database(database: Database) -> None:
    seqs = [append(database, at=i) for i in range(2)]
    with database.transaction() as s:
        audit_trail.add_audit_segment(s, number=1, count=1, prev_hash="g", hash="h", sealed_at=NOW, seal=lambda _: "s")
        audit_trail.seal_audit_events(s, placements=[{"seq": seqs[0], "segment": 1, "position": 0, "chain": "c"}])
    assert_refused_by_database(database, AuditSegment, number=1, count=1, prev_hash="g", hash="h")
    assert_refused_by_database(database, AuditEvent, **{**event(), "segment": 1, "position": 0})


def test_seal_legacy_segment(database: Database) -> None:
    with database.transaction() as s:
        # As the migration leaves it after a trail of five: the old head row's count and hash, never sealed.
        s.execute(insert(AuditSegment).values(number=0, count=5, prev_hash="g", hash="old"))
    with database.transaction() as s:
        zero = audit_trail.get_audit_segment(s, number=0)
        assert zero is not None and zero.seal is None
        audit_trail.seal_legacy_segment(
            s, segment=zero, hash="new", sealed_at=NOW, seal=lambda seg: f"{seg.hash}:{seg.count}"
        )
    with database.transaction() as s:
        zero = audit_trail.get_audit_segment(s, number=0)
        assert zero is not None and (zero.hash, zero.count, zero.sealed_at, zero.seal) == ("new", 5, NOW, "new:5")


def test_only_one_sealer_at_a_time(database: Database, db_url: str) -> None:
    """PostgreSQL elects one sealer with an advisory lock; SQLite's write lock already makes every sealer alone."""
    held, release = threading.Event(), threading.Event()
    results: list[bool] = []

    def hold() -> None:
        with database.transaction() as s:
            results.append(audit_trail.try_lock_audit_sealer(s))
            held.set()
            release.wait(30)

    if not db_url.startswith("postgresql"):
        with database.transaction() as s:
            assert audit_trail.try_lock_audit_sealer(s)
        return
    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        with database.transaction() as s:
            assert not audit_trail.try_lock_audit_sealer(s)
    finally:
        release.set()
        holder.join(30)
    assert results == [True]
    with database.transaction() as s:
        assert audit_trail.try_lock_audit_sealer(s)


def test_digests_are_added_once_and_published(database: Database) -> None:
    with database.transaction() as s:
        assert audit_trail.latest_audit_digest(s) is None
        assert audit_trail.add_audit_digest(s, number=1, segment=3, created_at=NOW, token="t1")
        assert not audit_trail.add_audit_digest(s, number=1, segment=4, created_at=NOW, token="t1-other")
        assert audit_trail.add_audit_digest(s, number=2, segment=5, created_at=NOW, token="t2")
    assert_refused_by_database(database, AuditDigest, number=2, segment=6, created_at=NOW, token="x")
    with database.transaction() as s:
        latest = audit_trail.latest_audit_digest(s)
        assert latest is not None and (latest.number, latest.token) == (2, "t2")
        assert [d.number for d in audit_trail.unpublished_audit_digests(s)] == [1, 2]
        audit_trail.mark_audit_digest_published(s, number=1, now=NOW)
    with database.transaction() as s:
        assert [d.number for d in audit_trail.unpublished_audit_digests(s)] == [2]


def test_search_and_count(database: Database) -> None:
    append(database, at=0)
    append(database, name="issue", at=1)
    append(database, outcome="denied", at=2)
    append(database, principal="bob", at=3)
    with database.transaction() as s:
        newest_first = [(e.event, e.principal, e.outcome) for e in audit_trail.search_audit_events(s)]
        assert newest_first == [
            ("login", "bob", "ok"),
            ("login", "ann", "denied"),
            ("issue", "ann", "ok"),
            ("login", "ann", "ok"),
        ]
        assert len(audit_trail.search_audit_events(s, event="login", principal="ann")) == 2
        assert len(audit_trail.search_audit_events(s, outcome="denied", reason="login_denied")) == 1
        after = audit_trail.search_audit_events(s, since=NOW + timedelta(minutes=1), until=NOW + timedelta(minutes=3))
        assert [e.detail for e in after] == [{"n": 2}, {"n": 1}]
        assert len(audit_trail.search_audit_events(s, limit=1)) == 1
        assert audit_trail.count_audit_events(s, principal="ann", since=NOW) == 3
        assert audit_trail.count_audit_events(s, principal="ann", since=NOW, outcome="ok", event="login") == 1
        assert audit_trail.count_audit_events(s, principal="ann", since=NOW + timedelta(minutes=2)) == 1
