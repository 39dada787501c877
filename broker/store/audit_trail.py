"""The audit trail's rows: events, the segments that seal them and the digests published outside.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.store.models import (
    AuditDigest,
    AuditEvent,
    AuditSegment,
)

# The PostgreSQL advisory-lock key that elects one audit sealer at a time across the fleet ("auditsl").
AUDIT_SEALER_LOCK = 0x61756469_74736C


def insert_audit_event(session: Session, *, values: dict[str, Any]) -> int:
    """Insert one event with a single INSERT statement (no ORM unit of work, no shared row lock); returns its
    ``seq``."""
    seq = session.execute(insert(AuditEvent).values(**values).returning(AuditEvent.seq)).scalar_one()
    return int(seq)


def append_audit_event(
    session: Session, *, fields: dict[str, Any], mac: Callable[[AuditEvent], str], inserted: Sequence[str]
) -> AuditEvent:
    """Build an event from ``fields``, give it its keyed ``mac`` and insert the ``inserted`` columns with one
    statement (:func:`insert_audit_event`). The returned row carries its ``seq`` and is not in the session."""
    row = AuditEvent(**fields)
    row.mac = mac(row)
    row.seq = insert_audit_event(session, values={name: getattr(row, name) for name in inserted})
    return row


def try_lock_audit_sealer(session: Session) -> bool:
    """Elect this transaction as the only sealer until it ends.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or rollback; another process holding it
    makes this return False at once. SQLite: every transaction starts with ``BEGIN IMMEDIATE``
    (``broker.store.db``), so holding the database's write lock already makes this the only sealer.
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.execute(text("SELECT pg_try_advisory_xact_lock(:key)"), {"key": AUDIT_SEALER_LOCK}).scalar())


def latest_audit_segment(session: Session) -> AuditSegment | None:
    return session.scalars(select(AuditSegment).order_by(AuditSegment.number.desc()).limit(1)).first()


def get_audit_segment(session: Session, *, number: int) -> AuditSegment | None:
    return session.get(AuditSegment, number)


def add_audit_segment(
    session: Session,
    *,
    number: int,
    count: int,
    prev_hash: str,
    hash: str,
    sealed_at: datetime,
    seal: Callable[[AuditSegment], str],
    key_id: str | None = None,
) -> AuditSegment:
    """Add a sealed segment; ``seal`` computes its keyed seal from the row's fields (made with root key
    ``key_id``)."""
    segment = AuditSegment(
        number=number, count=count, prev_hash=prev_hash, hash=hash, sealed_at=sealed_at, key_id=key_id
    )
    segment.seal = seal(segment)
    session.add(segment)
    session.flush()
    return segment


def seal_legacy_segment(
    session: Session,
    *,
    segment: AuditSegment,
    hash: str,
    sealed_at: datetime,
    seal: Callable[[AuditSegment], str],
    key_id: str | None = None,
) -> None:
    """Seal segment 0 as the migration left it (its ``count`` stays what the old head row named)."""
    segment.hash, segment.sealed_at, segment.key_id = hash, sealed_at, key_id
    segment.seal = seal(segment)
    session.flush()


def iter_audit_segments(session: Session, *, batch: int = 1000) -> Iterator[AuditSegment]:
    last = -1
    while True:
        rows = session.scalars(
            select(AuditSegment).where(AuditSegment.number > last).order_by(AuditSegment.number).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].number


def unsealed_audit_events(session: Session, *, limit: int) -> Sequence[AuditEvent]:
    """Committed events not yet in a segment, oldest insertion first."""
    query = select(AuditEvent).where(AuditEvent.segment.is_(None)).order_by(AuditEvent.seq).limit(limit)
    return session.scalars(query).all()


def iter_segment_events(session: Session, *, segment: int, batch: int = 2000) -> Iterator[AuditEvent]:
    """One segment's events in position order (in batches: the legacy segment 0 can be large)."""
    last = -1
    while True:
        query = (
            select(AuditEvent)
            .where(AuditEvent.segment == segment, AuditEvent.position > last)
            .order_by(AuditEvent.position)
            .limit(batch)
        )
        rows = session.scalars(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].position or 0


def seal_audit_events(session: Session, *, placements: list[dict[str, Any]]) -> None:
    """Give events their place: each mapping has ``seq``, ``segment``, ``position`` and ``chain``."""
    if not placements:
        return
    table = cast(Table, AuditEvent.__table__)
    statement = (
        update(table)
        .where(table.c.seq == bindparam("at_seq"))
        .values(segment=bindparam("at_segment"), position=bindparam("at_position"), chain=bindparam("at_chain"))
    )
    session.execute(
        statement,
        [
            {"at_seq": p["seq"], "at_segment": p["segment"], "at_position": p["position"], "at_chain": p["chain"]}
            for p in placements
        ],
    )


def duplicate_audit_event_ids(session: Session) -> Sequence[str]:
    query = select(AuditEvent.event_id).group_by(AuditEvent.event_id).having(func.count() > 1).limit(10)
    return session.scalars(query).all()


def iter_audit_events(session: Session, *, batch: int = 1000) -> Iterator[AuditEvent]:
    """Every event in insertion order (``seq``)."""
    last = -1
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.seq > last).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def rekey_audit_events(session: Session, *, macs: list[dict[str, Any]]) -> None:
    """Store events' MACs made under another root key: each mapping has ``seq``, ``mac`` and ``key_id``."""
    if not macs:
        return
    table = cast(Table, AuditEvent.__table__)
    statement = (
        update(table)
        .where(table.c.seq == bindparam("at_seq"))
        .values(mac=bindparam("at_mac"), key_id=bindparam("at_key_id"))
    )
    session.execute(
        statement,
        [{"at_seq": item["seq"], "at_mac": item["mac"], "at_key_id": item["key_id"]} for item in macs],
        execution_options={"synchronize_session": False},
    )


def iter_unsealed_audit_events(session: Session, *, batch: int = 1000) -> Iterator[AuditEvent]:
    last = -1
    while True:
        query = (
            select(AuditEvent)
            .where(AuditEvent.segment.is_(None), AuditEvent.seq > last)
            .order_by(AuditEvent.seq)
            .limit(batch)
        )
        rows = session.scalars(query).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].seq


def latest_audit_digest(session: Session) -> AuditDigest | None:
    return session.scalars(select(AuditDigest).order_by(AuditDigest.number.desc()).limit(1)).first()


def add_audit_digest(session: Session, *, number: int, segment: int, created_at: datetime, token: str) -> bool:
    """Record a new digest; False if another process recorded that number first."""
    try:
        with session.begin_nested():
            session.add(AuditDigest(number=number, segment=segment, created_at=created_at, token=token))
    except IntegrityError:
        return False
    return True


def unpublished_audit_digests(session: Session) -> Sequence[AuditDigest]:
    query = select(AuditDigest).where(AuditDigest.published_at.is_(None)).order_by(AuditDigest.number)
    return session.scalars(query).all()


def mark_audit_digest_published(session: Session, *, number: int, now: datetime) -> None:
    session.execute(update(AuditDigest).where(AuditDigest.number == number).values(published_at=now))


def search_audit_events(
    session: Session,
    *,
    event: str | None = None,
    principal: str | None = None,
    outcome: str | None = None,
    reason: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 100,
) -> Sequence[AuditEvent]:
    query = select(AuditEvent).order_by(AuditEvent.seq.desc()).limit(limit)
    if event:
        query = query.where(AuditEvent.event == event)
    if principal:
        query = query.where(AuditEvent.principal == principal)
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if reason:
        query = query.where(AuditEvent.reason == reason)
    if since:
        query = query.where(AuditEvent.occurred_at >= since)
    if until:
        query = query.where(AuditEvent.occurred_at < until)
    return session.scalars(query).all()


def count_audit_events(
    session: Session, *, principal: str, since: datetime, outcome: str | None = None, event: str | None = None
) -> int:
    from sqlalchemy import func

    query = (
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.principal == principal, AuditEvent.occurred_at >= since)
    )
    if outcome:
        query = query.where(AuditEvent.outcome == outcome)
    if event:
        query = query.where(AuditEvent.event == event)
    return int(session.scalar(query) or 0)
