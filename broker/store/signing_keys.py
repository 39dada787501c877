"""The broker's token signing keys: published, added once per generation, retired and removed.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import ColumnElement, delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.store.models import (
    SigningKey,
)


def list_signing_keys(session: Session, *, now: datetime) -> Sequence[SigningKey]:
    """Keys still published (newest first): the current key and retired keys whose tokens may be live."""
    query = (
        select(SigningKey)
        .where((SigningKey.publish_until.is_(None)) | (SigningKey.publish_until > now))
        .where(SigningKey.revoked_at.is_(None))
        .order_by(SigningKey.generation.desc())
    )
    return session.scalars(query).all()


def all_signing_keys(session: Session) -> Sequence[SigningKey]:
    """Every stored key, newest first, including retired ones no longer published (until they are deleted)."""
    return session.scalars(select(SigningKey).order_by(SigningKey.generation.desc())).all()


def get_signing_key(session: Session, *, kid: str) -> SigningKey | None:
    return session.get(SigningKey, kid)


def latest_signing_key(session: Session) -> SigningKey | None:
    return session.scalars(select(SigningKey).order_by(SigningKey.generation.desc()).limit(1)).one_or_none()


def add_signing_key(session: Session, *, key: SigningKey) -> bool:
    """Insert a new key; False if another process added this generation first (unique in the database)."""
    try:
        with session.begin_nested():
            session.add(key)
    except IntegrityError:
        return False
    return True


def retire_signing_key(
    session: Session, *, kid: str, retired_at: datetime, publish_until: datetime, revoked: bool = False
) -> None:
    """Stop signing with ``kid``; keep it published until ``publish_until``, or with ``revoked`` never again."""
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == kid, SigningKey.retired_at.is_(None))
        .values(retired_at=retired_at, publish_until=publish_until, revoked_at=retired_at if revoked else None)
    )


def delete_expired_signing_keys(session: Session, *, now: datetime, revoked_before: datetime | None = None) -> int:
    """Remove keys no live token can need any more; revoked keys once revoked before ``revoked_before``."""
    revoked_gone: ColumnElement[bool] = SigningKey.revoked_at.is_(None)
    if revoked_before is not None:
        revoked_gone = revoked_gone | (SigningKey.revoked_at < revoked_before)
    result = session.execute(
        delete(SigningKey).where(SigningKey.publish_until.is_not(None), SigningKey.publish_until <= now, revoked_gone)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# ---------------------------------------------------------------- MFA held by the broker
