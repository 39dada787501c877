"""MFA held by the broker: factors, recovery codes and the failure counters behind lockouts.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.store.models import (
    MfaFactor,
    MfaLockout,
    MfaRecoveryCode,
)


def add_mfa_factor(session: Session, **fields: Any) -> MfaFactor | None:
    """Insert a factor built from ``fields``; None if the name (per principal) or the WebAuthn credential id is
    already taken."""
    factor = MfaFactor(**fields)
    try:
        with session.begin_nested():
            session.add(factor)
    except IntegrityError:
        return None
    return factor


def list_mfa_factors(session: Session, *, principal_id: int, confirmed_only: bool = True) -> Sequence[MfaFactor]:
    query = select(MfaFactor).where(MfaFactor.principal_id == principal_id)
    if confirmed_only:
        query = query.where(MfaFactor.confirmed_at.is_not(None))
    return session.scalars(query.order_by(MfaFactor.id)).all()


def get_mfa_factor(session: Session, *, principal_id: int, factor_id: int) -> MfaFactor | None:
    factor = session.get(MfaFactor, factor_id)
    return factor if factor is not None and factor.principal_id == principal_id else None


def get_mfa_factor_by_credential(session: Session, *, credential_id: str) -> MfaFactor | None:
    return session.scalars(select(MfaFactor).where(MfaFactor.credential_id == credential_id)).one_or_none()


def delete_mfa_factor(session: Session, *, principal_id: int, factor_id: int) -> bool:
    result = session.execute(delete(MfaFactor).where(MfaFactor.id == factor_id, MfaFactor.principal_id == principal_id))
    return bool(getattr(result, "rowcount", 0))


def delete_pending_totp(session: Session, *, principal_id: int) -> None:
    """An unconfirmed enrolment is replaced by a new one (its secret was shown but never proven)."""
    session.execute(
        delete(MfaFactor).where(
            MfaFactor.principal_id == principal_id, MfaFactor.kind == "totp", MfaFactor.confirmed_at.is_(None)
        )
    )


def used_mfa_factor(session: Session, *, factor_id: int, now: datetime, secret_encrypted: str | None = None) -> None:
    """Mark a factor used (and confirmed, on first use); optionally store its secret re-encrypted."""
    values: dict[str, Any] = {"last_used_at": now}
    if secret_encrypted is not None:
        values["secret_encrypted"] = secret_encrypted
    session.execute(update(MfaFactor).where(MfaFactor.id == factor_id).values(**values))
    session.execute(
        update(MfaFactor).where(MfaFactor.id == factor_id, MfaFactor.confirmed_at.is_(None)).values(confirmed_at=now)
    )


def advance_sign_count(session: Session, *, factor_id: int, expected: int, new: int, now: datetime) -> bool:
    """Compare-and-set the WebAuthn signature counter: two racing assertions cannot both move it."""
    result = session.execute(
        update(MfaFactor)
        .where(MfaFactor.id == factor_id, MfaFactor.sign_count == expected)
        .values(sign_count=new, last_used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def list_totp_factors(session: Session) -> Sequence[MfaFactor]:
    """Every TOTP factor (for re-encryption under a new key)."""
    return session.scalars(select(MfaFactor).where(MfaFactor.kind == "totp").order_by(MfaFactor.id)).all()


def replace_recovery_codes(session: Session, *, principal_id: int, code_hmacs: Sequence[str], now: datetime) -> None:
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.principal_id == principal_id))
    session.add_all(
        MfaRecoveryCode(principal_id=principal_id, code_hmac=code_hmac, created_at=now) for code_hmac in code_hmacs
    )
    session.flush()


def use_recovery_code(session: Session, *, principal_id: int, code_hmac: str | Sequence[str], now: datetime) -> bool:
    """Spend a recovery code: one UPDATE guarded by ``used_at IS NULL``, so it works once across processes.
    ``code_hmac`` may list the code's HMAC under every listed root key (``broker.keys``)."""
    hmacs = [code_hmac] if isinstance(code_hmac, str) else list(code_hmac)
    result = session.execute(
        update(MfaRecoveryCode)
        .where(
            MfaRecoveryCode.principal_id == principal_id,
            MfaRecoveryCode.code_hmac.in_(hmacs),
            MfaRecoveryCode.used_at.is_(None),
        )
        .values(used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


def count_recovery_codes(session: Session, *, principal_id: int) -> int:
    rows = session.scalars(
        select(MfaRecoveryCode.id).where(
            MfaRecoveryCode.principal_id == principal_id, MfaRecoveryCode.used_at.is_(None)
        )
    ).all()
    return len(rows)


def lock_mfa_lockout(session: Session, *, key_hmac: str, scope: str) -> MfaLockout:
    """The failure counter for one principal or address, row-locked for this transaction (created if new)."""
    row = session.get(MfaLockout, key_hmac, with_for_update=True)
    if row is None:
        try:
            with session.begin_nested():
                session.add(MfaLockout(key_hmac=key_hmac, scope=scope, failures=0, lockouts=0))
        except IntegrityError:
            pass  # another process created it first
        row = session.get(MfaLockout, key_hmac, with_for_update=True, populate_existing=True)
        assert row is not None
    return row


def delete_mfa_lockout(session: Session, *, key_hmac: str) -> bool:
    result = session.execute(delete(MfaLockout).where(MfaLockout.key_hmac == key_hmac))
    return bool(getattr(result, "rowcount", 0))


def delete_mfa_state(session: Session, *, principal_id: int) -> int:
    """Remove every factor and recovery code of a principal (operator reset); returns the factors removed."""
    session.execute(delete(MfaRecoveryCode).where(MfaRecoveryCode.principal_id == principal_id))
    result = session.execute(delete(MfaFactor).where(MfaFactor.principal_id == principal_id))
    return int(getattr(result, "rowcount", 0) or 0)


def set_factor_secret(session: Session, *, factor_id: int, secret_encrypted: str) -> None:
    """Store a factor's secret re-encrypted (under a new key); the factor is otherwise unchanged."""
    session.execute(update(MfaFactor).where(MfaFactor.id == factor_id).values(secret_encrypted=secret_encrypted))
