"""Which root key (``broker.keys``) and which encryption key each stored value was made with: the queries
behind ``broker keys status``, ``broker keys re-encrypt``, `config check` and /readyz (``broker.keyring``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker.store.models import (
    AuditEvent,
    AuditSegment,
    BrokerSession,
    MfaFactor,
    RefreshFamily,
    RefreshToken,
    SigningKey,
)

# A TOTP secret's envelope starts "v1.<8 hex digits of the key fingerprint>." (``broker.mfa.crypto``).
_ENVELOPE_KEY = (4, 8)


def audit_event_key_counts(session: Session) -> dict[str | None, int]:
    """Events per root key id (None: written before key ids)."""
    rows = session.execute(select(AuditEvent.key_id, func.count()).group_by(AuditEvent.key_id)).all()
    return {kid: int(count) for kid, count in rows}


def audit_segment_key_counts(session: Session) -> dict[str | None, int]:
    """Segments per root key id (None: sealed before key ids)."""
    rows = session.execute(select(AuditSegment.key_id, func.count()).group_by(AuditSegment.key_id)).all()
    return {kid: int(count) for kid, count in rows}


def all_signing_keys(session: Session) -> Sequence[SigningKey]:
    """Every stored signing key, newest first (published or not yet purged)."""
    return session.scalars(select(SigningKey).order_by(SigningKey.generation.desc())).all()


def reencrypt_signing_key(session: Session, *, kid: str, private_jwk_encrypted: str, key_id: str) -> None:
    session.execute(
        update(SigningKey)
        .where(SigningKey.kid == kid)
        .values(private_jwk_encrypted=private_jwk_encrypted, key_id=key_id)
        .execution_options(synchronize_session=False)
    )


def totp_key_counts(session: Session) -> dict[str | None, int]:
    """TOTP factors per encryption key fingerprint named in their envelope (None: no envelope)."""
    start, length = _ENVELOPE_KEY
    kid = func.substr(MfaFactor.secret_encrypted, start, length)
    query = (
        select(kid, func.count()).where(MfaFactor.kind == "totp", MfaFactor.secret_encrypted.like("v1.%")).group_by(kid)
    )
    counts: dict[str | None, int] = {str(k): int(n) for k, n in session.execute(query).all()}
    bare = session.scalar(
        select(func.count()).where(
            MfaFactor.kind == "totp",
            MfaFactor.secret_encrypted.is_not(None),
            MfaFactor.secret_encrypted.not_like("v1.%"),
        )
    )
    if bare:
        counts[None] = int(bare)
    return counts


def live_session_key_counts(session: Session, *, now: datetime) -> dict[str | None, tuple[int, datetime]]:
    """Live sessions per root key id of their HMAC: how many, and when the last of them ends."""
    query = (
        select(BrokerSession.key_id, func.count(), func.max(BrokerSession.expires_at))
        .where(BrokerSession.revoked_at.is_(None), BrokerSession.expires_at > now)
        .group_by(BrokerSession.key_id)
    )
    return {kid: (int(count), until) for kid, count, until in session.execute(query).all()}


def live_refresh_key_counts(session: Session, *, now: datetime) -> dict[str | None, tuple[int, datetime]]:
    """Live CLI sign-ins per root key id of their current refresh token's HMAC, and when the last one ends."""
    query = (
        select(RefreshToken.key_id, func.count(), func.max(RefreshFamily.expires_at))
        .join(RefreshFamily, RefreshFamily.id == RefreshToken.family_id)
        .where(RefreshToken.rotated_at.is_(None), RefreshFamily.revoked_at.is_(None), RefreshFamily.expires_at > now)
        .group_by(RefreshToken.key_id)
    )
    return {kid: (int(count), until) for kid, count, until in session.execute(query).all()}
