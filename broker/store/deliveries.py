"""The outgoing webhook queue: deliveries enqueued in a transaction and sent by one process each.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.store.models import (
    WebhookDelivery,
)


def enqueue_delivery(session: Session, *, kind: str, payload: dict[str, Any], now: datetime) -> WebhookDelivery:
    row = WebhookDelivery(kind=kind, payload=payload, status="pending", attempts=0, next_attempt_at=now, created_at=now)
    session.add(row)
    session.flush()
    return row


def due_deliveries(session: Session, *, now: datetime, limit: int = 20) -> Sequence[WebhookDelivery]:
    """Pending deliveries whose next attempt is due, locked (SKIP LOCKED) so each goes out from one process."""
    query = (
        select(WebhookDelivery)
        .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at <= now)
        .order_by(WebhookDelivery.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return session.scalars(query).all()


def list_deliveries(session: Session, *, status: str | None = None, limit: int = 100) -> Sequence[WebhookDelivery]:
    query = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(limit)
    if status is not None:
        query = query.where(WebhookDelivery.status == status)
    return session.scalars(query).all()


def get_delivery(session: Session, *, delivery_id: int) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def lease_delivery(session: Session, *, row: WebhookDelivery, until: datetime) -> None:
    """Count an attempt and push the next one out to ``until``, so no other process sends it meanwhile."""
    row.attempts += 1
    row.next_attempt_at = until


def mark_delivered(session: Session, *, row: WebhookDelivery, now: datetime) -> None:
    row.status, row.delivered_at, row.last_error = "delivered", now, None


def record_delivery_failure(session: Session, *, row: WebhookDelivery, error: str, retry_at: datetime | None) -> None:
    """Keep the error; retry at ``retry_at``, or give up (``failed``) when it is None."""
    row.last_error = error
    if retry_at is None:
        row.status = "failed"
    else:
        row.next_attempt_at = retry_at
