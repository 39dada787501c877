"""Operator actions on MFA: the two-person reset of a principal's factors and re-encryption under a new key."""

from __future__ import annotations

import secrets
from datetime import timedelta
from typing import Any

from broker.context import Context
from broker.errors import (
    AccessDenied,
    BrokerError,
    MfaRequired,
    NotFound,
    ServiceUnavailable,
)
from broker.identity import MfaLevel
from broker.mfa.attempts import MfaCore
from broker.mfa.views import (
    RESET_STORE,
    RESET_TTL_SECONDS,
    Holder,
    PendingReset,
)
from broker.policy import rule_matches
from broker.store import queries


class AdminReset(MfaCore):
    """The operator's reset (requested in a shell, approved in the browser by a second person) and key rotation."""

    def request_reset(self, principal: str, *, requested_by: str) -> PendingReset:
        """Step one (``broker mfa reset``): record a reset request; it does nothing until approved.

        The command runs where the configuration and database are (an operator's shell), which proves no
        sign-in at all; so the reset itself happens only when an operator approves it in the browser with
        their own phishing-resistant sign-in (:meth:`approve_reset`).
        """
        now = self.clock()
        with self.db.transaction() as session:
            found = queries.find_principals(session, name=principal)
            if len(found) != 1:
                names = ", ".join(f"{p.store}:{p.subject}" for p in found)
                raise NotFound(
                    f"{len(found)} principals match {principal!r}"
                    + (f" ({names}); name one as store:subject" if found else ""),
                    reason="mfa.reset_principal_unknown",
                )
            target = found[0]
            token = secrets.token_urlsafe(32)
            queries.save_login_request(
                session,
                state_hmac=self.keys.mac("mfa-reset", token),
                store=RESET_STORE,
                browser_hmac="-",
                data={
                    "principal_id": target.id,
                    "principal": target.email or target.username,
                    "requested_by": requested_by,
                },
                now=now,
                expires_at=now + timedelta(seconds=RESET_TTL_SECONDS),
            )
            self.audit.append(
                session,
                event="mfa.reset",
                outcome="requested",
                reason="mfa.reset_requested",
                principal=target.email or target.username,
                store=target.store,
                detail={
                    "requested_by": requested_by,
                    "expires_at": (now + timedelta(seconds=RESET_TTL_SECONDS)).isoformat(),
                },
            )
        return PendingReset(token, f"{self.settings.public_url}/mfa/reset/{token}", target.email or target.username)

    def pending_reset(self, token: str) -> dict[str, Any]:
        with self.db.transaction() as session:
            row = queries.get_login_request(session, state_hmac=self.keys.mac("mfa-reset", token[:128]))
            if row is None or row.store != RESET_STORE or row.expires_at <= self.clock():
                raise NotFound("This reset request does not exist or has expired.", reason="mfa.reset_unknown")
            return dict(row.data)

    def approve_reset(self, operator: Holder, ctx: Context, *, token: str) -> str:
        """Step two: an operator with a fresh phishing-resistant sign-in removes the principal's factors."""
        now = self.clock()
        since = now - timedelta(minutes=self.config.reset_max_age_minutes)
        error: BrokerError | None = None
        if not any(rule_matches(rule, operator.identity) for rule in self.config.operators):
            error = AccessDenied("Only MFA operators may approve a reset.", reason="mfa.reset_not_operator")
        elif operator.identity.mfa.level_since(since) < MfaLevel.PHISHING_RESISTANT:
            error = MfaRequired(
                f"Approving a reset needs a phishing-resistant sign-in (a security key) within the last "
                f"{self.config.reset_max_age_minutes} minutes. Confirm with your security key, then approve.",
                reason="mfa.reset_requires_phishing_resistant",
            )
        if error is not None:
            raise self.audit.deny(self.db, error, event="mfa.reset", identity=operator.identity, ctx=ctx)
        try:
            with self.db.transaction() as session:
                row = queries.take_login_request(session, state_hmac=self.keys.mac("mfa-reset", token[:128]))
                if row is None or row.store != RESET_STORE or row.expires_at <= now:
                    raise NotFound("This reset request does not exist or has expired.", reason="mfa.reset_unknown")
                data = dict(row.data)
                target_id = int(data["principal_id"])
                if target_id == operator.principal_id:
                    raise AccessDenied("Nobody may approve a reset of their own factors.", reason="mfa.reset_self")
                removed = queries.delete_mfa_state(session, principal_id=target_id)
                queries.delete_mfa_lockout(session, key_hmac=self.keys.mac("mfa-lockout", f"principal:{target_id}"))
                # Whoever holds the person's sessions or CLI sign-ins may be why the factors are reset: they
                # end with the factors, as when the person is disabled (browser sessions and refresh families).
                signed_out = queries.revoke_sessions(session, principal_id=target_id, now=now)
                signed_out += queries.revoke_refresh_families_of(
                    session, principal_id=target_id, now=now, reason="mfa_reset"
                )
                self.audit.append(
                    session,
                    event="mfa.reset",
                    outcome="ok",
                    reason="mfa.operator_reset",
                    identity=operator.identity,
                    ctx=ctx,
                    detail={
                        "target": data["principal"],
                        "factors_removed": removed,
                        "sessions_ended": signed_out,
                        "requested_by": data["requested_by"],
                    },
                )
                self.audit.append(
                    session,
                    event="mfa.unlock",
                    outcome="ok",
                    reason="mfa.operator_reset",
                    principal=str(data["principal"]),
                    ctx=ctx,
                    detail={"operator": operator.identity.principal},
                )
        except BrokerError as exc:
            if isinstance(exc, ServiceUnavailable):
                raise
            raise self.audit.deny(self.db, exc, event="mfa.reset", identity=operator.identity, ctx=ctx) from None
        return str(data["principal"])

    def rotate_key(self) -> int:
        """Re-encrypt every TOTP secret under the first configured key; returns how many changed."""
        changed = 0
        with self.db.transaction() as session:
            for row in queries.list_totp_factors(session):
                if row.secret_encrypted and self.box.needs_rotation(row.secret_encrypted):
                    context = self._context(row.principal_id)
                    resealed = self.box.seal(self.box.open(row.secret_encrypted, context=context), context=context)
                    queries.set_factor_secret(session, factor_id=row.id, secret_encrypted=resealed)
                    changed += 1
            self.audit.append(
                session,
                event="mfa.rotate_key",
                outcome="ok",
                reason="mfa.secrets_reencrypted",
                detail={"count": changed},
            )
        return changed
