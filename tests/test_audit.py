"""The audit chain on SQLite and PostgreSQL: tamper detection, secrets as HMACs, export."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, select, text, update

from broker.audit import AuditTrail, export_jsonl
from broker.keys import Keys
from broker.store.db import Database
from broker.store.models import AuditChainHead, AuditEvent

KEYS = Keys(SecretStr("test-secret-key-0123456789-abcdefghijklmnop"))


@pytest.fixture
def trail() -> AuditTrail:
    return AuditTrail(KEYS, lambda: datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC))


def fill(database: Database, trail: AuditTrail, n: int = 5) -> None:
    for i in range(n):
        trail.record(
            database,
            event="login",
            outcome="ok",
            reason="authenticated",
            principal=f"user{i}",
            detail={"n": i, "groups": ["a", "b"], "unicode": "é\u202e"},
        )


def verify(database: Database, trail: AuditTrail) -> tuple[bool, int | None, str | None]:
    with database.transaction() as s:
        result = trail.verify_store(s)
    return result.ok, result.bad_seq, result.problem


def test_intact_chain_verifies(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    assert verify(database, trail) == (True, None, None)


def test_edit_is_detected_and_located(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(principal="mallory"))
    ok, bad, problem = verify(database, trail)
    assert (ok, bad) == (False, 3) and "edited" in (problem or "")


def test_edit_with_recomputed_plain_hash_is_detected(database: Database, trail: AuditTrail) -> None:
    """An attacker without the broker's key cannot recompute the HMAC chain."""
    fill(database, trail)
    forger = AuditTrail(Keys(SecretStr("attacker-guess-" + "x" * 30)))
    with database.transaction() as s:
        row = s.get(AuditEvent, 2)
        assert row is not None
        row.reason = "forged"
        row.hash = forger._hash(row.prev_hash, __import__("broker.audit", fromlist=["x"])._hashed_fields(row))
    assert verify(database, trail)[:2] == (False, 2)


def test_delete_in_the_middle_is_detected(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    with database.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 2))
    ok, bad, problem = verify(database, trail)
    assert (ok, bad) == (False, 3) and "missing" in (problem or "")


def test_delete_at_the_end_is_detected(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    with database.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == 5))
    ok, bad, _ = verify(database, trail)
    assert (ok, bad) == (False, 5)


def test_reorder_is_detected(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    with database.transaction() as s:
        # Events 2 and 3 trade places in the sequence.
        s.execute(update(AuditEvent).where(AuditEvent.seq == 2).values(seq=-1))
        s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(seq=2))
        s.execute(update(AuditEvent).where(AuditEvent.seq == -1).values(seq=3))
    ok, bad, _ = verify(database, trail)
    assert (ok, bad) == (False, 2)


def test_insert_is_detected(database: Database, trail: AuditTrail) -> None:
    fill(database, trail, 3)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == 3).values(seq=4))
        first = s.get(AuditEvent, 2)
        assert first is not None
        s.add(
            AuditEvent(
                seq=3,
                event_id="inserted",
                occurred_at=first.occurred_at,
                event="login",
                outcome="ok",
                reason="x",
                detail={},
                prev_hash=first.hash,
                hash="f" * 64,
            )
        )
        s.execute(update(AuditChainHead).values(seq=4))
    ok, bad, _ = verify(database, trail)
    assert (ok, bad) == (False, 3)


def test_secret_shaped_detail_is_stored_only_as_hmac(database: Database, trail: AuditTrail) -> None:
    trail.record(
        database,
        event="token",
        outcome="denied",
        reason="invalid_grant",
        detail={"subject_token": "eyJ.secret.jwt", "password": "hunter2", "role": "ro"},
    )
    with database.transaction() as s:
        row = s.scalars(select(AuditEvent)).one()
        raw = s.execute(text("SELECT detail FROM audit_events")).scalar_one()
    assert "eyJ.secret.jwt" not in json.dumps(raw) and "hunter2" not in json.dumps(raw)
    assert row.detail["subject_token_ref"] == trail.ref("eyJ.secret.jwt")
    assert row.detail["role"] == "ro"


def test_export_writes_json_lines_in_chain_order(database: Database, trail: AuditTrail) -> None:
    fill(database, trail, 3)
    buffer = io.StringIO()
    with database.transaction() as s:
        assert export_jsonl(s, buffer) == 3
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [line["seq"] for line in lines] == [1, 2, 3]
    assert lines[1]["prev_hash"] == lines[0]["hash"]
    assert lines[0]["detail"]["unicode"] == "é\u202e"


def test_concurrent_appends_from_two_processes_keep_one_chain(
    database: Database, db_url: str, trail: AuditTrail
) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(db_url, 20)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    ok, bad, problem = verify(database, AuditTrail(KEYS))
    assert ok, (bad, problem)
    with database.transaction() as s:
        assert len(s.scalars(select(AuditEvent.seq)).all()) == 40


def _append_many(url: str, n: int) -> None:
    database = Database(url)
    trail = AuditTrail(KEYS)
    for i in range(n):
        trail.record(database, event="login", outcome="ok", reason="authenticated", principal=f"p{i}")
    database.dispose()


def test_a_refusal_raised_inside_a_transaction_is_recorded_after_its_rollback(
    database: Database, trail: AuditTrail
) -> None:
    """Never beside the caller's transaction (on SQLite that waited on its write lock, then failed as 503)."""
    from broker.errors import AccessDenied

    with pytest.raises(AccessDenied) as refused, database.transaction() as s:
        s.execute(text("UPDATE principals SET disabled = disabled"))  # a write: the caller holds the write lock
        raise trail.deny(database, AccessDenied(reason="principal_disabled"), event="login", principal="mallory")
    assert refused.value.reason == "principal_disabled"
    with database.transaction() as s:
        rows = [(r.event, r.outcome, r.reason, r.principal, r.detail) for r in s.scalars(select(AuditEvent))]
    assert rows == [("login", "denied", "principal_disabled", "mallory", {"error": "access_denied"})]
    assert verify(database, trail) == (True, None, None)


def test_a_refusal_outside_any_transaction_is_recorded_at_once(database: Database, trail: AuditTrail) -> None:
    from broker.errors import InvalidRequest

    error = trail.deny(database, InvalidRequest(reason="api_body_shape"), event="credentials")
    assert error.reason == "api_body_shape"
    with database.transaction() as s:
        assert [r.reason for r in s.scalars(select(AuditEvent))] == ["api_body_shape"]


def test_record_beside_an_open_transaction_is_a_programming_error(database: Database, trail: AuditTrail) -> None:
    with pytest.raises(RuntimeError, match="inside an open transaction"), database.transaction():
        trail.record(database, event="login", outcome="ok", reason="authenticated")
    with database.transaction() as s:
        assert s.scalars(select(AuditEvent)).all() == []
