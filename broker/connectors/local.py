"""Break-glass local accounts: argon2id password plus TOTP (RFC 6238), for when the corporate IdP is down.

Every use is audited as break-glass by the use-case layer. The TOTP step that was accepted is returned so
that the caller can refuse its reuse through the shared replay guard.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from broker.connectors.base import OneTime, PasswordLogin
from broker.errors import TOTP_REPLAY_MESSAGE, AuthenticationFailed
from broker.identity import Identity, MfaEvidence, MfaLevel
from broker.mfa import totp
from broker.settings import LocalAccount, LocalStoreConfig

TOTP_STEP_SECONDS = totp.STEP_SECONDS
_HASHER = PasswordHasher()
# Verifying against this when the user does not exist keeps the timing of "no such user" and
# "wrong password" alike, so usernames cannot be probed.
_DUMMY_HASH = _HASHER.hash("not-a-real-password")


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


@dataclass(frozen=True)
class LocalLogin:
    identity: Identity
    totp_step: int


class LocalConnector:
    kind = "local"

    def __init__(self, config: LocalStoreConfig, *, issuer: str) -> None:
        self._config = config
        self._issuer = issuer
        self._accounts = {a.username: a for a in config.accounts}

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def display_name(self) -> str:
        return self._config.display_name

    @property
    def audit_detail(self) -> Mapping[str, object]:
        return {"break_glass": True}

    def account_key(self, username: str) -> str:
        return username

    def audit_principal(self, username: str) -> str | None:
        return username[:256]

    def login(self, username: str, password: str, otp: str, *, now: float) -> PasswordLogin:
        """:meth:`authenticate`, with the accepted TOTP step to spend once (RFC 6238 section 5.2)."""
        login = self.authenticate(username, password, otp, now=now)
        one_time = OneTime(
            kind="totp",
            key=f"{self.name}:{username}:{login.totp_step}",
            ttl_seconds=TOTP_STEP_SECONDS * 4,
            message=TOTP_REPLAY_MESSAGE,
        )
        return PasswordLogin(login.identity, one_time)

    def _totp_step(self, account: LocalAccount, code: str, now: float) -> int | None:
        # One step either side is accepted for clock drift (RFC 6238 section 5.2), as for enrolled factors.
        return totp.matching_step(account.totp_secret.get_secret_value(), code, now=now)

    def authenticate(self, username: str, password: str, totp_code: str, *, now: float | None = None) -> LocalLogin:
        """Check password and TOTP; raise AuthenticationFailed with a reason, never saying which part failed."""
        now = time.time() if now is None else now
        account = self._accounts.get(username)
        try:
            _HASHER.verify(account.password_hash.get_secret_value() if account else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            raise AuthenticationFailed(reason="password_invalid") from None
        if account is None:
            raise AuthenticationFailed(reason="password_invalid")
        step = self._totp_step(account, totp_code.strip(), now)
        if step is None:
            raise AuthenticationFailed(reason="totp_invalid")
        identity = Identity(
            subject=account.username,
            issuer=self._issuer,
            store=self.name,
            username=account.username,
            email=account.email,
            groups=frozenset(account.groups),
            mfa=MfaEvidence(
                level=MfaLevel.MFA, methods=("pwd", "otp"), authenticated_at=datetime.fromtimestamp(now, UTC)
            ),
            break_glass=True,
        )
        return LocalLogin(identity=identity, totp_step=step)
