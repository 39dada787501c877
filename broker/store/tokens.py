"""The credential helper's sign-in: device authorizations, authorization codes and refresh token families.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.store.models import (
    AuthorizationCode,
    DeviceAuthorization,
    RefreshFamily,
    RefreshToken,
)


def _changed(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


def add_device_authorization(session: Session, **fields: Any) -> bool:
    """Insert a device authorization built from ``fields``; False if its user code collides with a live one
    (unique in the database)."""
    try:
        with session.begin_nested():
            session.add(DeviceAuthorization(**fields))
    except IntegrityError:
        return False
    return True


def get_device_authorization(
    session: Session, *, device_code_hmac: str | None = None, user_code_hmac: str | None = None
) -> DeviceAuthorization | None:
    query = select(DeviceAuthorization).execution_options(populate_existing=True)
    if device_code_hmac is not None:
        query = query.where(DeviceAuthorization.device_code_hmac == device_code_hmac)
    elif user_code_hmac is not None:
        query = query.where(DeviceAuthorization.user_code_hmac == user_code_hmac)
    else:
        return None
    return session.scalars(query).one_or_none()


def record_device_poll(session: Session, *, device_code_hmac: str, now: datetime, interval_seconds: int) -> None:
    session.execute(
        update(DeviceAuthorization)
        .where(DeviceAuthorization.device_code_hmac == device_code_hmac)
        .values(last_polled_at=now, interval_seconds=interval_seconds)
        .execution_options(synchronize_session=False)
    )


def move_device_authorization(
    session: Session, *, device_code_hmac: str, from_status: str, to_status: str, **values: Any
) -> bool:
    """Compare-and-set the status: True for exactly one caller, across every broker process."""
    result = session.execute(
        update(DeviceAuthorization)
        .where(DeviceAuthorization.device_code_hmac == device_code_hmac, DeviceAuthorization.status == from_status)
        .values(status=to_status, **values)
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def add_authorization_code(session: Session, **fields: Any) -> None:
    """Insert an authorization code built from ``fields`` (keyed by the HMAC of the code)."""
    session.add(AuthorizationCode(**fields))


def get_authorization_code(session: Session, *, code_hmac: str) -> AuthorizationCode | None:
    return session.get(AuthorizationCode, code_hmac, populate_existing=True)


def consume_authorization_code(session: Session, *, code_hmac: str, now: datetime) -> bool:
    """Mark the code used; True for exactly one caller (RFC 6749 section 4.1.2: a code is used once)."""
    result = session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hmac == code_hmac, AuthorizationCode.consumed_at.is_(None))
        .values(consumed_at=now)
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def link_authorization_code(session: Session, *, code_hmac: str, family_id: str) -> None:
    session.execute(
        update(AuthorizationCode)
        .where(AuthorizationCode.code_hmac == code_hmac)
        .values(family_id=family_id)
        .execution_options(synchronize_session=False)
    )


def create_refresh_family(
    session: Session, *, token_hmac: str, key_id: str | None = None, **fields: Any
) -> RefreshFamily:
    """A new CLI sign-in built from ``fields``, with its first refresh token (generation 0), whose HMAC was made
    with root key ``key_id``."""
    family = RefreshFamily(**fields)
    session.add(family)
    session.flush()
    session.add(
        RefreshToken(
            token_hmac=token_hmac, family_id=family.id, generation=0, created_at=family.created_at, key_id=key_id
        )
    )
    session.flush()
    return family


def get_refresh_token(
    session: Session, *, token_hmac: str | Sequence[str]
) -> tuple[RefreshToken, RefreshFamily] | None:
    """The token stored under this HMAC, or under any of these (one per listed root key, ``broker.keys``)."""
    hmacs = [token_hmac] if isinstance(token_hmac, str) else list(token_hmac)
    row = session.execute(
        select(RefreshToken, RefreshFamily)
        .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
        .where(RefreshToken.token_hmac.in_(hmacs))
        .limit(1)
        .execution_options(populate_existing=True)
    ).first()
    return (row[0], row[1]) if row is not None else None


def get_refresh_family(session: Session, *, family_id: str) -> RefreshFamily | None:
    return session.get(RefreshFamily, family_id, populate_existing=True)


def rotate_refresh_token(
    session: Session,
    *,
    token_hmac: str,
    family_id: str,
    generation: int,
    new_token_hmac: str,
    now: datetime,
    key_id: str | None = None,
) -> bool:
    """Retire a refresh token and add its successor; False if it was already rotated (a reuse, or a race lost
    to another process: ``(family_id, generation)`` is unique, so only one successor can exist)."""
    result = session.execute(
        update(RefreshToken)
        .where(RefreshToken.token_hmac == token_hmac, RefreshToken.rotated_at.is_(None))
        .values(rotated_at=now)
        .execution_options(synchronize_session=False)
    )
    if _changed(result) != 1:
        return False
    try:
        with session.begin_nested():
            session.add(
                RefreshToken(
                    token_hmac=new_token_hmac, family_id=family_id, generation=generation, created_at=now, key_id=key_id
                )
            )
    except IntegrityError:
        return False
    return True


def revoke_refresh_family(session: Session, *, family_id: str, now: datetime, reason: str) -> bool:
    """Revoke one CLI sign-in (every refresh token of the family); True if it was live."""
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.id == family_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
        .execution_options(synchronize_session=False)
    )
    return _changed(result) == 1


def revoke_refresh_families_of(session: Session, *, principal_id: int, now: datetime, reason: str) -> int:
    """Revoke every live CLI sign-in of a principal (for administrators); returns how many."""
    result = session.execute(
        update(RefreshFamily)
        .where(RefreshFamily.principal_id == principal_id, RefreshFamily.revoked_at.is_(None))
        .values(revoked_at=now, revoked_reason=reason[:64])
        .execution_options(synchronize_session=False)
    )
    return _changed(result)


def purge_cli_sign_ins(session: Session, *, now: datetime) -> int:
    """Remove device authorizations, authorization codes and CLI sign-ins that have ended."""
    total = 0
    for model in (DeviceAuthorization, AuthorizationCode):
        total += _changed(session.execute(delete(model).where(model.expires_at < now)))
    ended = select(RefreshFamily.id).where(RefreshFamily.expires_at < now)
    total += _changed(session.execute(delete(RefreshToken).where(RefreshToken.family_id.in_(ended))))
    total += _changed(session.execute(delete(RefreshFamily).where(RefreshFamily.expires_at < now)))
    return total
