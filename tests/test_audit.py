"""The audit trail on SQLite and PostgreSQL: appends, sealing, every kind of tampering named, the seal window,
secrets as HMACs, export."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr
from sqlalchemy import delete, select, text, update

from broker.audit import AuditTrail, VerifyResult, export_jsonl
from broker.keys import Keys
from broker.store.db import Database
from broker.store.models import AuditEvent, AuditSegment

KEYS = Keys(SecretStr("test-secret-key-0123456789-abcdefghijklmnop"))
NOW = datetime(2026, 11, 28, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def trail(clock: Clock) -> AuditTrail:
    return AuditTrail(KEYS, clock)


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


def sealed(database: Database, trail: AuditTrail, n: int = 5) -> list[AuditEvent]:
    """``n`` events sealed in one segment (segment 1), in position order."""
    fill(database, trail, n)
    assert trail.seal(database) == n
    with database.transaction() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.segment == 1).order_by(AuditEvent.position)))


def verify(database: Database, trail: AuditTrail) -> VerifyResult:
    with database.transaction() as s:
        return trail.verify_store(s)


def test_appends_are_verified_before_and_after_sealing(database: Database, trail: AuditTrail) -> None:
    fill(database, trail)
    before = verify(database, trail)
    assert (before.ok, before.checked, before.unsealed) == (True, 5, 5)
    assert trail.seal(database) == 5
    after = verify(database, trail)
    assert (after.ok, after.checked, after.unsealed, after.segments) == (True, 5, 0, 2)
    fill(database, trail, 3)
    assert trail.seal(database) == 3
    assert trail.seal(database) == 0  # nothing new: no empty segment
    final = verify(database, trail)
    assert (final.ok, final.checked, final.segments) == (True, 8, 3)


def test_events_inside_the_seal_window_verify_and_overdue_ones_fail(
    database: Database, trail: AuditTrail, clock: Clock
) -> None:
    fill(database, trail, 2)
    clock.now = NOW + trail.seal_window - timedelta(seconds=1)
    inside = verify(database, trail)
    assert (inside.ok, inside.unsealed) == (True, 2)
    clock.now = NOW + trail.seal_window + timedelta(seconds=1)
    late = verify(database, trail)
    assert not late.ok and late.bad_seq is not None and late.unsealed == 2
    assert "the sealer is stalled, or the event was inserted after the fact" in (late.problem or "")
    # Once the sealer has run, the same events are fine at any age.
    assert trail.seal(database) == 2
    assert verify(database, trail).ok


def test_edit_of_a_sealed_event_is_named(database: Database, trail: AuditTrail) -> None:
    rows = sealed(database, trail)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == rows[2].seq).values(principal="mallory"))
    result = verify(database, trail)
    assert (result.ok, result.bad_seq, result.segment, result.position) == (False, rows[2].seq, 1, 2)
    assert result.event_id == rows[2].event_id and "edited" in (result.problem or "")


def test_edit_of_an_unsealed_event_is_named(database: Database, trail: AuditTrail) -> None:
    fill(database, trail, 3)
    with database.transaction() as s:
        seq = s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()[1]
        s.execute(update(AuditEvent).where(AuditEvent.seq == seq).values(reason="forged"))
    result = verify(database, trail)
    assert (result.ok, result.bad_seq) == (False, seq) and "edited" in (result.problem or "")


def test_edit_with_a_mac_under_another_key_is_detected(database: Database, trail: AuditTrail) -> None:
    """An attacker without the broker's key cannot make a MAC that verifies."""
    rows = sealed(database, trail)
    forger = AuditTrail(Keys(SecretStr("attacker-guess-" + "x" * 30)))
    with database.transaction() as s:
        row = s.get(AuditEvent, rows[1].seq)
        assert row is not None
        row.reason = "forged"
        row.mac = forger.event_mac(row)
    result = verify(database, trail)
    assert (result.ok, result.bad_seq) == (False, rows[1].seq) and "edited" in (result.problem or "")


def test_delete_in_the_middle_is_named(database: Database, trail: AuditTrail) -> None:
    rows = sealed(database, trail)
    with database.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == rows[1].seq))
    result = verify(database, trail)
    assert (result.ok, result.segment, result.bad_seq) == (False, 1, rows[2].seq)
    assert "the event at position 1 is missing (found 2 next): deleted" in (result.problem or "")


def test_delete_of_the_newest_event_is_named(database: Database, trail: AuditTrail) -> None:
    rows = sealed(database, trail)
    with database.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.seq == rows[-1].seq))
    result = verify(database, trail)
    assert (result.ok, result.segment, result.position) == (False, 1, 4)
    assert "sealed with 5 event(s) but holds 4: deleted from its end" in (result.problem or "")


def test_reorder_is_named(database: Database, trail: AuditTrail) -> None:
    rows = sealed(database, trail)
    with database.transaction() as s:
        # Events at positions 1 and 2 trade places (through a free position: (segment, position) is unique).
        s.execute(update(AuditEvent).where(AuditEvent.seq == rows[1].seq).values(position=99))
        s.execute(update(AuditEvent).where(AuditEvent.seq == rows[2].seq).values(position=1))
        s.execute(update(AuditEvent).where(AuditEvent.seq == rows[1].seq).values(position=2))
    result = verify(database, trail)
    assert (result.ok, result.bad_seq, result.position) == (False, rows[2].seq, 1)
    assert "reordered or inserted" in (result.problem or "")


def test_insert_is_named(database: Database, trail: AuditTrail) -> None:
    rows = sealed(database, trail, 3)
    with database.transaction() as s:
        s.execute(update(AuditEvent).where(AuditEvent.seq == rows[2].seq).values(position=3))
        s.add(
            AuditEvent(
                event_id="inserted-event",
                occurred_at=rows[1].occurred_at,
                event="credentials",
                outcome="ok",
                reason="issued",
                detail={},
                writer=rows[1].writer,
                mac=rows[1].mac,
                segment=1,
                position=2,
                chain=rows[1].chain,
            )
        )
        s.execute(update(AuditSegment).where(AuditSegment.number == 1).values(count=4))
    result = verify(database, trail)
    # The segment's count is covered by its seal, so raising it to fit the insertion is caught first...
    assert (result.ok, result.segment) == (False, 1) and "the segment row was edited" in (result.problem or "")
    # With the segment row left alone the inserted event itself is named.
    with database.transaction() as s:
        s.execute(update(AuditSegment).where(AuditSegment.number == 1).values(count=3))
    named = verify(database, trail)
    assert (named.ok, named.event_id, named.position) == (False, "inserted-event", 2)
    assert "inserted without the key" in (named.problem or "")


def test_a_copied_event_is_named(database: Database, trail: AuditTrail, db_url: str) -> None:
    rows = sealed(database, trail, 2)
    columns = "event_id, occurred_at, event, outcome, reason, principal, store, channel, client_ip, request_id, "
    columns += "detail, writer, mac"
    copy = f"INSERT INTO audit_events (seq, {columns}) SELECT seq + 1000, {columns} FROM audit_events WHERE seq = :s"  # noqa: S608
    postgres = db_url.startswith("postgresql")
    with database.transaction() as s:
        # Someone with write access drops the uniqueness of event_id and replays a valid event.
        if postgres:
            s.execute(text("ALTER TABLE audit_events DROP CONSTRAINT audit_events_event_id_key"))
        else:  # SQLite cannot drop a UNIQUE constraint in place: rebuild the table without it
            s.execute(text("CREATE TABLE audit_copy AS SELECT * FROM audit_events"))
            s.execute(text("DROP TABLE audit_events"))
            s.execute(text("ALTER TABLE audit_copy RENAME TO audit_events"))
        s.execute(text(copy), {"s": rows[0].seq})
    try:
        result = verify(database, trail)
        assert (result.ok, result.event_id) == (False, rows[0].event_id)
        assert "a copy was inserted" in (result.problem or "")
    finally:
        if postgres:  # the PostgreSQL database is shared by the session's tests: put the constraint back
            with database.transaction() as s:
                s.execute(delete(AuditEvent).where(AuditEvent.seq == rows[0].seq + 1000))
                s.execute(text("ALTER TABLE audit_events ADD CONSTRAINT audit_events_event_id_key UNIQUE (event_id)"))


def test_edited_segment_row_is_named(database: Database, trail: AuditTrail) -> None:
    sealed(database, trail)
    with database.transaction() as s:
        s.execute(update(AuditSegment).where(AuditSegment.number == 1).values(count=4))
    result = verify(database, trail)
    assert (result.ok, result.segment) == (False, 1) and "the segment row was edited" in (result.problem or "")


def test_deleted_segment_is_named(database: Database, trail: AuditTrail) -> None:
    fill(database, trail, 2)
    trail.seal(database)
    fill(database, trail, 2)
    trail.seal(database)
    fill(database, trail, 2)
    trail.seal(database)
    with database.transaction() as s:
        s.execute(delete(AuditEvent).where(AuditEvent.segment == 2))
        s.execute(delete(AuditSegment).where(AuditSegment.number == 2))
    result = verify(database, trail)
    assert (result.ok, result.segment) == (False, 2)
    assert "segment 2 is missing (found 3 next): deleted" in (result.problem or "")


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
    trail.seal(database)
    fill(database, trail, 1)
    buffer = io.StringIO()
    with database.transaction() as s:
        assert export_jsonl(s, buffer) == 4
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert [(line["segment"], line["position"]) for line in lines] == [(1, 0), (1, 1), (1, 2), (None, None)]
    assert [line["principal"] for line in lines] == ["user0", "user1", "user2", "user0"]
    assert lines[0]["detail"]["unicode"] == "é\u202e"
    assert all(line["mac"] and line["writer"] for line in lines) and lines[3]["chain"] is None


def test_concurrent_appends_and_sealers_from_two_processes(database: Database, db_url: str) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_and_seal, args=(db_url, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    trail = AuditTrail(KEYS)
    trail.seal(database)
    result = verify(database, trail)
    assert result.ok, (result.where, result.problem)
    assert (result.checked, result.unsealed) == (80, 0)
    with database.transaction() as s:
        writers = set(s.scalars(select(AuditEvent.writer)).all())
        assert len(writers) == 2


def _append_and_seal(url: str, n: int) -> None:
    database = Database(url)
    trail = AuditTrail(KEYS)
    for i in range(n):
        trail.record(database, event="login", outcome="ok", reason="authenticated", principal=f"p{i}")
        if i % 7 == 0:
            trail.seal(database, batch=5)
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
    result = verify(database, trail)
    assert (result.ok, result.checked, result.problem) == (True, 1, None)


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
