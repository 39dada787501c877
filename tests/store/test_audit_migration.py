"""Revision 0007 on SQLite and PostgreSQL: a trail written by the one-row-at-a-time chain (schema 0006) becomes
segment 0, still verified by its own algorithm; new events chain on from it; tampering is named in both parts."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    delete,
    text,
    update,
)

from broker.anchors import Anchors, DirectorySink, load_public_key, verify_digests
from broker.audit import AuditTrail, VerifyResult, canonical
from broker.keys import Keys
from broker.settings import AuditAnchorSettings
from broker.store import db as store_db
from broker.store.db import Database
from broker.store.models import AuditEvent, UtcDateTime
from tests.conftest import SECRET, postgres_admin_url
from tests.test_anchors import pem_pair

KEYS = Keys(SecretStr(SECRET))
LEGACY = 4

# The tables as revision 0006 left them.
_schema = MetaData()
legacy_events = Table(
    "audit_events",
    _schema,
    Column("seq", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False),
    Column("event_id", String(36)),
    Column("occurred_at", UtcDateTime()),
    Column("event", String(64)),
    Column("outcome", String(16)),
    Column("reason", String(128)),
    Column("principal", Text),
    Column("store", String(64)),
    Column("channel", String(16)),
    Column("client_ip", String(64)),
    Column("request_id", String(64)),
    Column("detail", JSON),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
)
legacy_head = Table(
    "audit_chain_head",
    _schema,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger().with_variant(Integer(), "sqlite")),
    Column("hash", String(64)),
)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of its own (the migration under test must start from nothing)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'legacy.db'}"
        return
    base = postgres_admin_url()
    name = f"broker_mig_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def write_legacy_trail(url: str, n: int) -> list[dict[str, object]]:
    """``n`` events exactly as the previous release appended them: seq, prev_hash, hash, and the head row."""
    key = KEYS.key("audit-chain")
    engine = store_db.make_engine(url)
    rows: list[dict[str, object]] = []
    prev = "0" * 64
    start = datetime(2026, 11, 1, 9, 0, 0, 250000, tzinfo=UTC)
    with engine.begin() as conn:
        for seq in range(1, n + 1):
            row: dict[str, object] = {
                "seq": seq,
                "event_id": str(uuid.uuid4()),
                "occurred_at": start + timedelta(minutes=seq),
                "event": "login",
                "outcome": "ok",
                "reason": "authenticated",
                "principal": f"legacy{seq}",
                "store": "corp",
                "channel": None,
                "client_ip": "192.0.2.1",
                "request_id": None,
                "detail": {"n": seq, "unicode": "é\u202e"},
            }
            hashed = {**row, "occurred_at": (start + timedelta(minutes=seq)).isoformat()}
            digest = hmac.new(key, (prev + "\n" + canonical(hashed)).encode(), hashlib.sha256).hexdigest()
            conn.execute(legacy_events.insert().values(**row, prev_hash=prev, hash=digest))
            prev = digest
            rows.append(row)
        conn.execute(legacy_head.insert().values(id=1, seq=n, hash=prev))
    engine.dispose()
    return rows


@pytest.fixture
def upgraded(fresh_url: str) -> Iterator[tuple[Database, AuditTrail]]:
    store_db.upgrade(fresh_url, "0006_merge_parallel_branches")
    write_legacy_trail(fresh_url, LEGACY)
    store_db.upgrade(fresh_url)
    database = Database(fresh_url)
    try:
        yield database, AuditTrail(KEYS)
    finally:
        database.dispose()


def verify(database: Database, trail: AuditTrail) -> VerifyResult:
    with database.transaction() as s:
        return trail.verify_store(s)


def append(database: Database, trail: AuditTrail, n: int) -> None:
    for i in range(n):
        trail.record(database, event="credentials", outcome="ok", reason="issued", principal=f"new{i}")


def test_the_legacy_trail_verifies_before_and_after_its_first_seal(upgraded: tuple[Database, AuditTrail]) -> None:
    database, trail = upgraded
    before = verify(database, trail)  # segment 0 waits for the first sealer pass, which needs the key
    assert (before.ok, before.checked, before.segments) == (True, LEGACY, 1)
    append(database, trail, 3)
    assert trail.seal(database) == 3
    after = verify(database, trail)
    assert (after.ok, after.checked, after.segments, after.unsealed) == (True, LEGACY + 3, 2, 0)
    with database.transaction() as s:
        first_new = s.get(AuditEvent, LEGACY + 1)
        zero_hash = s.execute(text("SELECT hash FROM audit_segments WHERE number = 0")).scalar_one()
        one_prev = s.execute(text("SELECT prev_hash FROM audit_segments WHERE number = 1")).scalar_one()
    assert first_new is not None and (first_new.segment, first_new.position) == (1, 0)
    assert one_prev == zero_hash  # the first new segment chains from the legacy head


def test_tampering_is_named_in_the_legacy_part(upgraded: tuple[Database, AuditTrail]) -> None:
    database, trail = upgraded
    append(database, trail, 2)
    trail.seal(database)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(principal="mallory"))
    edited = verify(database, trail)
    assert (edited.ok, edited.bad_seq, edited.segment, edited.position) == (False, 2, 0, 1)
    assert "edited" in (edited.problem or "")
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(principal="legacy2"))
        s.execute(delete(AuditEvent).where(AuditEvent.seq == LEGACY))
    truncated = verify(database, trail)
    assert (truncated.ok, truncated.segment) == (False, 0)
    assert f"sealed with {LEGACY} event(s) but holds {LEGACY - 1}: deleted from its end" in (truncated.problem or "")


def test_tampering_is_named_in_the_new_part(upgraded: tuple[Database, AuditTrail]) -> None:
    database, trail = upgraded
    append(database, trail, 3)
    trail.seal(database)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == LEGACY + 2).values(reason="denied"))
    result = verify(database, trail)
    assert (result.ok, result.bad_seq, result.segment, result.position) == (False, LEGACY + 2, 1, 1)
    assert "edited" in (result.problem or "")


def test_digests_cover_the_legacy_part(upgraded: tuple[Database, AuditTrail], tmp_path: Path) -> None:
    database, trail = upgraded
    private, public = pem_pair()
    config = AuditAnchorSettings(signing_key=SecretStr(private), directory=tmp_path / "digests")
    append(database, trail, 2)
    trail.seal(database)
    assert Anchors(config).publish_due(database) == 1
    sink = DirectorySink(tmp_path / "digests")
    with database.transaction() as s:
        assert verify_digests(s, sink, load_public_key(public)).checked == LEGACY + 2
        # Someone with the key re-signs a legacy event's old-style hash: the digests still name it.
        row = s.get(AuditEvent, 3)
        assert row is not None
        row.principal = "mallory"
    with database.transaction() as s:
        result = verify_digests(s, sink, load_public_key(public))
    assert (result.ok, result.bad_seq, result.segment, result.position) == (False, 3, 0, 2)


def test_removing_the_legacy_seal_is_named(upgraded: tuple[Database, AuditTrail]) -> None:
    database, trail = upgraded
    append(database, trail, 1)
    trail.seal(database)
    with database.transaction() as s:
        # Without the seal, a shortened legacy segment would otherwise pass as "not sealed yet".
        s.execute(delete(AuditEvent).where(AuditEvent.seq == LEGACY))
        s.execute(text("UPDATE audit_segments SET seal = NULL, count = count - 1 WHERE number = 0"))
    result = verify(database, trail)
    assert (result.ok, result.segment, result.problem) == (False, 0, "segment 0 lost its seal")
