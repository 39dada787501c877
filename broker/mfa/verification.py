"""Step-up verification with a factor the broker holds: TOTP, a recovery code or a security key."""

from __future__ import annotations

from typing import Any

from broker.context import Context
from broker.errors import (
    AuthenticationFailed,
    NotFound,
)
from broker.identity import Factor, MfaLevel
from broker.mfa import recovery
from broker.mfa import webauthn as wa
from broker.mfa.attempts import MfaCore
from broker.mfa.views import (
    RECOVERY,
    TOTP,
    WEBAUTHN,
    Holder,
    Verified,
)
from broker.store import queries
from broker.store.db import Session


class Verification(MfaCore):
    """Verify a factor as a step-up; each attempt goes through :meth:`MfaCore._attempt` (lockout, check, audit)."""

    def verify_totp(self, holder: Holder, ctx: Context, *, code: str) -> Verified:
        identity, _ = self._attempt(holder, ctx, TOTP, self._totp_check(holder, code, factor_id=None))
        return Verified(identity)

    def verify_recovery(self, holder: Holder, ctx: Context, *, code: str) -> Verified:
        def check(session: Session) -> Factor:
            normalized = recovery.normalize(code)
            now = self.clock()
            if normalized is None or not queries.use_recovery_code(
                session,
                principal_id=holder.principal_id,
                code_hmac=self.keys.macs("mfa-recovery", f"{holder.principal_id}:{normalized}"),
                now=now,
            ):
                raise AuthenticationFailed(
                    "That recovery code is not valid, or was used already.", reason="mfa.recovery_invalid"
                )
            return Factor(RECOVERY, MfaLevel.MFA, now)

        identity, _ = self._attempt(holder, ctx, RECOVERY, check)
        return Verified(identity)

    def begin_authentication(self, holder: Holder, ctx: Context, *, level: MfaLevel) -> dict[str, Any]:
        require_uv = level >= MfaLevel.PHISHING_RESISTANT
        with self.db.transaction() as session:
            allow = [
                r.credential_id
                for r in queries.list_mfa_factors(session, principal_id=holder.principal_id)
                if r.kind == WEBAUTHN and r.credential_id
            ]
            if not allow:
                raise NotFound("You have no security key registered. Add one on the MFA page.", reason="mfa.no_factor")
            ceremony = wa.authentication(self.rp, allow=allow, require_uv=require_uv)
            self._save_ceremony(session, holder, "authenticate", {"challenge": ceremony.challenge, "uv": require_uv})
        return wa.options_dict(ceremony)

    def finish_authentication(self, holder: Holder, ctx: Context, *, payload: str) -> Verified:
        def check(session: Session) -> Factor:
            data = self._take_ceremony(session, holder, "authenticate")
            credential_id = wa.credential_id_of(payload)
            row = queries.get_mfa_factor_by_credential(session, credential_id=credential_id)
            if row is None or row.principal_id != holder.principal_id or row.public_key is None:
                raise AuthenticationFailed("This security key is not registered to you.", reason="webauthn.unknown_key")
            assertion = wa.verify_authentication(
                self.rp,
                payload,
                challenge=str(data["challenge"]),
                public_key=row.public_key,
                sign_count=row.sign_count,
                require_uv=bool(data.get("uv")),
            )
            now = self.clock()
            if not queries.advance_sign_count(
                session, factor_id=row.id, expected=row.sign_count, new=assertion.new_sign_count, now=now
            ):
                raise AuthenticationFailed(
                    "This security key was used at the same moment elsewhere. Try again.",
                    reason="webauthn.sign_count_race",
                )
            level = MfaLevel.PHISHING_RESISTANT if assertion.user_verified else MfaLevel.MFA
            return Factor(WEBAUTHN, level, now)

        identity, _ = self._attempt(holder, ctx, WEBAUTHN, check)
        return Verified(identity)
