"""The issuance rows: one per credential handed out, written in the transaction of its audit event.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, func, insert, select, update
from sqlalchemy.orm import Session

from broker.store.models import (
    Issuance,
)


def insert_issuance(session: Session, **fields: Any) -> int:
    """:func:`record_issuance` as one Core ``INSERT ... RETURNING id``, for the issuance hot path."""
    issuance_id: int = session.execute(_INSERT_ISSUANCE, fields).scalar_one()
    return issuance_id


_INSERT_ISSUANCE = insert(cast(Table, Issuance.__table__)).returning(cast(Table, Issuance.__table__).c.id)


def get_issuance(session: Session, *, issuance_id: int) -> Issuance | None:
    return session.get(Issuance, issuance_id)


def find_issuances(
    session: Session,
    *,
    principal_id: int | None = None,
    role_name: str | None = None,
    live_at: datetime | None = None,
    since: datetime | None = None,
    limit: int = 100,
) -> Sequence[Issuance]:
    """Issuances, newest first; ``live_at`` keeps those unexpired and unrevoked at that instant."""
    query = select(Issuance).order_by(Issuance.id.desc()).limit(limit)
    if principal_id is not None:
        query = query.where(Issuance.principal_id == principal_id)
    if role_name is not None:
        query = query.where(Issuance.role_name == role_name)
    if live_at is not None:
        query = query.where(Issuance.expires_at > live_at, Issuance.revoked_at.is_(None))
    if since is not None:
        query = query.where(Issuance.issued_at >= since)
    return session.scalars(query).all()


def mark_issuances_revoked(session: Session, *, ids: Sequence[int], now: datetime) -> None:
    if ids:
        session.execute(
            update(Issuance).where(Issuance.id.in_(list(ids)), Issuance.revoked_at.is_(None)).values(revoked_at=now)
        )


def usage_since(session: Session, *, since: datetime) -> list[tuple[str, int, int, datetime]]:
    """(role, principal id, issuances, last issued) for every issuance since ``since``."""

    query = (
        select(Issuance.role_name, Issuance.principal_id, func.count(), func.max(Issuance.issued_at))
        .where(Issuance.issued_at >= since)
        .group_by(Issuance.role_name, Issuance.principal_id)
    )
    return [(str(r), int(p), int(c), last) for r, p, c, last in session.execute(query).all()]
