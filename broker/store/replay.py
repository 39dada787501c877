"""The replay guard: one-time values (assertion ids, jti, nonces) the database accepts exactly once.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import cast

from sqlalchemy import Table, delete, insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.errors import ReplayDetected
from broker.store.models import (
    BrokerSession,
    LoginRequest,
    ReplayGuard,
    SamlSession,
)
from broker.store.tokens import purge_cli_sign_ins


def consume_once(
    session: Session,
    *,
    kind: str,
    key_hmac: str | Sequence[str],
    expires_at: datetime,
    message: str | None = None,
    savepoint: bool = True,
) -> None:
    """Record a one-time value; raise ReplayDetected if it was recorded before (by any process).

    ``key_hmac`` may be the value's HMAC under every listed root key (``broker.keys``): each is recorded, so a
    value used just before a key rotation is still refused just after it.

    The primary key makes the database the arbiter: two processes racing on one value both INSERT and
    exactly one commits. One Core INSERT, no unit of work. With ``savepoint`` (the default) the caller's
    transaction stays usable after a conflict. Hot paths pass ``savepoint=False`` to save its two round trips:
    a conflict then aborts the whole transaction, so ReplayDetected must propagate out of it (it rolls back).
    """
    hmacs = [key_hmac] if isinstance(key_hmac, str) else list(key_hmac)
    values = [{"kind": kind, "key_hmac": one, "expires_at": expires_at} for one in hmacs]
    try:
        if savepoint:
            with session.begin_nested():
                session.execute(_INSERT_ONCE, values)
        else:
            session.execute(_INSERT_ONCE, values)
    except IntegrityError:
        raise ReplayDetected(message, reason=f"{kind}_replay") from None


_INSERT_ONCE = insert(cast(Table, ReplayGuard.__table__))


def purge_expired(session: Session, *, now: datetime) -> int:
    """Remove replay-guard rows, sign-ins in flight and sessions that can no longer matter."""
    total = 0
    for model in (ReplayGuard, LoginRequest, BrokerSession, SamlSession):
        result = session.execute(delete(model).where(model.expires_at < now))
        total += int(getattr(result, "rowcount", 0) or 0)
    total += purge_cli_sign_ins(session, now=now)
    return total
