"""Device certificates seen at sign-in and the operator's revocations of them.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.store.models import (
    DeviceCertificate,
)


def certificate_revoked(session: Session, *, fingerprint: str, issuer: str, serial: str) -> DeviceCertificate | None:
    """The operator's revocation of this certificate (by fingerprint, or by issuer and serial), if any."""
    return session.scalars(
        select(DeviceCertificate)
        .where(
            DeviceCertificate.revoked_at.is_not(None),
            (DeviceCertificate.fingerprint == fingerprint)
            | ((DeviceCertificate.serial == serial) & (DeviceCertificate.issuer == issuer)),
        )
        .limit(1)
    ).first()


def record_certificate_use(
    session: Session,
    *,
    fingerprint: str,
    issuer: str,
    serial: str,
    store: str,
    principal_id: int,
    not_after: datetime,
    now: datetime,
) -> DeviceCertificate:
    row = session.scalars(select(DeviceCertificate).where(DeviceCertificate.fingerprint == fingerprint)).one_or_none()
    if row is None:
        row = DeviceCertificate(
            fingerprint=fingerprint,
            issuer=issuer,
            serial=serial,
            store=store,
            principal_id=principal_id,
            not_after=not_after,
            first_seen_at=now,
        )
        session.add(row)
    row.principal_id = principal_id
    row.last_seen_at = now
    session.flush()
    return row


def find_certificates(
    session: Session, *, serial: str | None = None, issuer: str | None = None, principal_id: int | None = None
) -> Sequence[DeviceCertificate]:
    query = select(DeviceCertificate)
    if serial is not None:
        query = query.where(DeviceCertificate.serial == serial)
    if issuer is not None:
        query = query.where(DeviceCertificate.issuer == issuer)
    if principal_id is not None:
        query = query.where(DeviceCertificate.principal_id == principal_id)
    return session.scalars(query.order_by(DeviceCertificate.id)).all()


def revoke_certificates(session: Session, *, ids: Sequence[int], now: datetime, reason: str) -> None:
    if ids:
        session.execute(
            update(DeviceCertificate)
            .where(DeviceCertificate.id.in_(ids), DeviceCertificate.revoked_at.is_(None))
            .values(revoked_at=now, revoked_reason=reason)
        )


def block_certificate_serial(session: Session, *, issuer: str, serial: str, now: datetime, reason: str) -> None:
    """Refuse a certificate that has never signed in, by its issuer and serial."""
    session.add(
        DeviceCertificate(
            fingerprint=None, issuer=issuer, serial=serial, store="", revoked_at=now, revoked_reason=reason
        )
    )
    session.flush()
