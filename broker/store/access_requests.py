"""Just-in-time access requests, their approval windows, and the revocation records.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.store.models import (
    AccessRequestRow,
    Principal,
    Revocation,
)


def _changed(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def create_access_request(session: Session, **fields: Any) -> AccessRequestRow:
    row = AccessRequestRow(**fields)
    session.add(row)
    session.flush()
    return row


def get_access_request(session: Session, *, request_id: int, lock: bool = False) -> AccessRequestRow | None:
    return session.get(AccessRequestRow, request_id, with_for_update=lock)


def list_access_requests(
    session: Session,
    *,
    status: str | None = None,
    principal_id: int | None = None,
    role_name: str | None = None,
    limit: int = 100,
) -> Sequence[AccessRequestRow]:
    query = select(AccessRequestRow).order_by(AccessRequestRow.id.desc()).limit(limit)
    if status is not None:
        query = query.where(AccessRequestRow.status == status)
    if principal_id is not None:
        query = query.where(AccessRequestRow.principal_id == principal_id)
    if role_name is not None:
        query = query.where(AccessRequestRow.role_name == role_name)
    return session.scalars(query).all()


def open_grants(session: Session, *, principal_id: int, now: datetime) -> Sequence[AccessRequestRow]:
    """Approved requests whose window is open now."""
    query = select(AccessRequestRow).where(
        AccessRequestRow.principal_id == principal_id,
        AccessRequestRow.status == "approved",
        AccessRequestRow.grant_ends_at > now,
    )
    return session.scalars(query).all()


def open_grants_for(session: Session, *, store: str, subject: str, now: datetime) -> Sequence[AccessRequestRow]:
    principal = session.scalars(
        select(Principal).where(Principal.store == store, Principal.subject == subject)
    ).one_or_none()
    return open_grants(session, principal_id=principal.id, now=now) if principal else []


def due_requests(session: Session, *, now: datetime, limit: int = 100) -> Sequence[AccessRequestRow]:
    """Pending requests past their answer deadline, locked so one process expires each."""
    query = (
        select(AccessRequestRow)
        .where(AccessRequestRow.status == "pending", AccessRequestRow.expires_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def due_grants(session: Session, *, now: datetime, limit: int = 100) -> Sequence[AccessRequestRow]:
    """Approved requests whose window has closed, locked so one process ends each."""
    query = (
        select(AccessRequestRow)
        .where(AccessRequestRow.status == "approved", AccessRequestRow.grant_ends_at <= now)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def record_revocation(session: Session, **fields: Any) -> Revocation:
    row = Revocation(**fields)
    session.add(row)
    session.flush()
    return row


def list_revocations(session: Session, *, limit: int = 100) -> Sequence[Revocation]:
    return session.scalars(select(Revocation).order_by(Revocation.id.desc()).limit(limit)).all()


def end_access_requests_of(session: Session, *, principal_id: int, now: datetime) -> int:
    """Revoke a principal's open just-in-time grants and cancel their pending requests; returns how many."""
    granted = session.execute(
        update(AccessRequestRow)
        .where(
            AccessRequestRow.principal_id == principal_id,
            AccessRequestRow.status == "approved",
            AccessRequestRow.grant_ends_at > now,
        )
        .values(status="revoked", ended_at=now, grant_ends_at=now)
    )
    pending = session.execute(
        update(AccessRequestRow)
        .where(AccessRequestRow.principal_id == principal_id, AccessRequestRow.status == "pending")
        .values(status="cancelled", decided_at=now, decision_note="deprovisioned")
    )
    return _changed(granted) + _changed(pending)


def approve_request(session: Session, *, row: AccessRequestRow, now: datetime) -> None:
    """Open the request's window: from now for the duration it asked for."""
    row.status, row.grant_starts_at = "approved", now
    row.grant_ends_at = now + timedelta(seconds=row.duration_seconds)


def close_request(session: Session, *, row: AccessRequestRow, status: str) -> None:
    """End a pending request without a window: ``denied``, ``cancelled`` or ``expired``."""
    row.status = status


def end_grant(session: Session, *, row: AccessRequestRow, now: datetime, cut_short: bool = False) -> None:
    """Close an approved window; ``cut_short`` also moves its end to now (cancelled before it ran out)."""
    row.status, row.ended_at = "ended", now
    if cut_short:
        row.grant_ends_at = now


def record_decision(session: Session, *, row: AccessRequestRow, by: str, now: datetime, note: str | None) -> None:
    """Who answered the request, when, and the note they gave (None when empty)."""
    row.decided_by, row.decided_at, row.decision_note = by, now, note
