"""What the MFA use cases hand back (views of factors, enrolments, resets) and the names they share."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from broker.errors import (
    InvalidRequest,
)
from broker.identity import Identity, MfaLevel
from broker.store.models import MfaFactor

TOTP, WEBAUTHN, RECOVERY = "totp", "webauthn", "recovery_code"
# RFC 8176 amr names for what the broker checked: a one-time password, a hardware key; recovery codes have
# no registered name.
AMR = {TOTP: "otp", WEBAUTHN: "hwk", RECOVERY: "recovery_code"}
BROKER_METHODS = frozenset(AMR)
# A pending operator reset must be approved within this time.
RESET_TTL_SECONDS = 900
CEREMONY_STORE = "webauthn"
RESET_STORE = "mfa-reset"


@dataclass(frozen=True)
class Holder:
    """Who is acting: the session's principal and identity, and the session (by HMAC) to update."""

    principal_id: int
    identity: Identity
    session_hmac: str


@dataclass(frozen=True)
class FactorView:
    id: int
    kind: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    level: MfaLevel


@dataclass(frozen=True)
class Overview:
    factors: list[FactorView]
    recovery_codes_left: int
    strongest: MfaLevel


@dataclass(frozen=True)
class TotpEnrolment:
    factor_id: int
    secret: str
    uri: str
    qr: str


@dataclass(frozen=True)
class Verified:
    identity: Identity
    recovery_codes: list[str] | None = None


@dataclass(frozen=True)
class PendingReset:
    token: str
    url: str
    principal: str


def level_of(row: MfaFactor) -> MfaLevel:
    if row.kind == WEBAUTHN and row.user_verified:
        return MfaLevel.PHISHING_RESISTANT
    return MfaLevel.MFA


def factor_name(name: str, default: str) -> str:
    cleaned = " ".join(name.split())[:64]
    if any(not c.isprintable() for c in cleaned):
        raise InvalidRequest("A factor name may hold printable characters only.", reason="mfa.name_invalid")
    return cleaned or default
