"""The MFA service's core: its dependencies, the lockout-guarded attempt, and the checks the use cases share.

Every attempt runs in one transaction that row-locks the principal's and the client address's failure
counters: a lockout is checked before the code, and the outcome, the counters and exactly one audit event
commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import (
    TOTP_REPLAY_MESSAGE,
    AuthenticationFailed,
    BrokerError,
    InvalidRequest,
    MfaRequired,
    NotFound,
    RateLimited,
    ServiceUnavailable,
)
from broker.identity import Factor, Identity, MfaLevel
from broker.keys import Keys
from broker.mfa import lockout, recovery, totp
from broker.mfa import webauthn as wa
from broker.mfa.crypto import SecretBox
from broker.mfa.views import (
    AMR,
    BROKER_METHODS,
    CEREMONY_STORE,
    TOTP,
    FactorView,
    Holder,
    Overview,
    level_of,
)
from broker.settings import Settings
from broker.store import queries
from broker.store.db import Database, Session


class MfaCore:
    """Dependencies and shared steps of every MFA use case (:class:`broker.mfa.service.MfaService`)."""

    def __init__(self, settings: Settings, *, db: Database, keys: Keys, audit: AuditTrail, clock: Clock) -> None:
        self.settings = settings
        self.config = settings.mfa
        self.db = db
        self.keys = keys
        self.audit = audit
        self.clock = clock
        explicit = [k.get_secret_value().encode() for k in self.config.encryption_keys]
        self.box = SecretBox.for_keyring(explicit, keys)
        host = settings.public_url.split("://", 1)[1].split("/", 1)[0]
        origin = settings.public_url.split("://", 1)[0] + "://" + host
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        self.rp = wa.RelyingParty(
            id=self.config.rp_id or hostname,
            name=self.config.rp_name,
            origins=tuple(self.config.origins or [origin]),
        )
        self.rule = lockout.LockoutRule(
            max_failures=self.config.max_failures,
            window=timedelta(seconds=self.config.failure_window_seconds),
            base=timedelta(seconds=self.config.lockout_seconds),
            cap=timedelta(seconds=self.config.max_lockout_seconds),
        )
        self.address_rule = replace(self.rule, max_failures=self.config.max_failures_per_address)

    def overview(self, principal_id: int) -> Overview:
        with self.db.transaction() as session:
            rows = queries.list_mfa_factors(session, principal_id=principal_id)
            views = [FactorView(r.id, r.kind, r.name, r.created_at, r.last_used_at, level_of(r)) for r in rows]
            left = queries.count_recovery_codes(session, principal_id=principal_id)
        return Overview(views, left, max((v.level for v in views), default=MfaLevel.NONE))

    def _context(self, principal_id: int) -> str:
        return f"mfa-totp:{principal_id}"

    def _require_manage(self, holder: Holder, ctx: Context, action: str) -> None:
        """Changing factors needs a recent broker factor once any exists (a stolen session cannot add its own)."""
        with self.db.transaction() as session:
            has_factors = bool(queries.list_mfa_factors(session, principal_id=holder.principal_id))
        if not has_factors:
            return
        since = self.clock() - timedelta(minutes=self.config.manage_max_age_minutes)
        if any(f.method in BROKER_METHODS and f.at >= since for f in holder.identity.mfa.factors):
            return
        raise self.audit.deny(
            self.db,
            MfaRequired(
                "Confirm with one of your existing factors first, then change your factors.",
                reason="mfa.manage_requires_factor",
            ),
            event="mfa.manage",
            identity=holder.identity,
            ctx=ctx,
            detail={"action": action},
        )

    def _attempt(
        self,
        holder: Holder,
        ctx: Context,
        method: str,
        check: Callable[[Session], Factor],
        *,
        after: Callable[[Session, Identity], Any] | None = None,
    ) -> tuple[Identity, Any]:
        now = self.clock()
        keys = [(self.keys.mac("mfa-lockout", f"principal:{holder.principal_id}"), "principal", self.rule)]
        if ctx.client_ip:
            keys.append((self.keys.mac("mfa-lockout", f"address:{ctx.client_ip}"), "address", self.address_rule))
        outcome: BrokerError | None = None
        result: tuple[Identity, Any] | None = None
        audit: dict[str, Any] = {"identity": holder.identity, "ctx": ctx}
        with self.db.transaction() as session:
            counters = [(queries.lock_mfa_lockout(session, key_hmac=k, scope=s), s, r) for k, s, r in keys]
            for counter, scope, _ in counters:
                if lockout.expire(counter, now):
                    self.audit.append(
                        session,
                        event="mfa.unlock",
                        outcome="ok",
                        reason="mfa.lockout_expired",
                        detail={"scope": scope},
                        **audit,
                    )
            ends = [end for counter, _, _ in counters if (end := lockout.locked_until(counter, now))]
            if ends:
                wait = max(1, int((max(ends) - now).total_seconds()) + 1)
                self.audit.append(
                    session,
                    event="mfa.verify",
                    outcome="denied",
                    reason="mfa.locked_out",
                    detail={"method": method, "retry_after": wait},
                    **audit,
                )
                outcome = RateLimited(
                    f"Too many wrong codes. Your factors are locked for {wait} seconds; try again after that.",
                    reason="mfa.locked_out",
                    retry_after=wait,
                )
            else:
                try:
                    factor = check(session)
                except ServiceUnavailable:
                    raise
                except BrokerError as exc:
                    started = [
                        (scope, end) for counter, scope, rule in counters if (end := lockout.fail(counter, rule, now))
                    ]
                    detail: dict[str, Any] = {"method": method}
                    if started:
                        scope, end = started[0]
                        detail.update(failure=exc.reason, scope=scope, locked_until=end.isoformat())
                        self.audit.append(
                            session, event="mfa.lockout", outcome="denied", reason="mfa.locked", detail=detail, **audit
                        )
                        wait = int((end - now).total_seconds())
                        outcome = RateLimited(
                            f"Too many wrong codes. Your factors are locked for {wait} seconds.",
                            reason="mfa.locked",
                            retry_after=wait,
                        )
                    else:
                        self.audit.append(
                            session, event="mfa.verify", outcome="denied", reason=exc.reason, detail=detail, **audit
                        )
                        outcome = exc
                else:
                    for counter, scope, _ in counters:
                        if scope == "principal":
                            lockout.succeed(counter)
                    identity = replace(holder.identity, mfa=holder.identity.mfa.with_factor(factor, AMR[factor.method]))
                    queries.update_session_identity(session, id_hmac=holder.session_hmac, identity=identity)
                    extra = after(session, identity) if after else None
                    self.audit.append(
                        session,
                        event="mfa.verify",
                        outcome="ok",
                        reason=f"mfa.{factor.method}",
                        identity=identity,
                        ctx=ctx,
                        detail={"method": factor.method, "level": factor.level.label, "mfa": identity.mfa.level.label},
                    )
                    result = (identity, extra)
        if outcome is not None:
            raise outcome
        assert result is not None
        return result

    def _totp_check(self, holder: Holder, code: str, *, factor_id: int | None) -> Callable[[Session], Factor]:
        def check(session: Session) -> Factor:
            now = self.clock()
            if factor_id is not None:
                row = queries.get_mfa_factor(session, principal_id=holder.principal_id, factor_id=factor_id)
                rows = [row] if row is not None and row.kind == TOTP and row.confirmed_at is None else []
            else:
                rows = [
                    r for r in queries.list_mfa_factors(session, principal_id=holder.principal_id) if r.kind == TOTP
                ]
            if not rows:
                raise NotFound("There is no authenticator app to check this code against.", reason="mfa.no_factor")
            for row in rows:
                assert row.secret_encrypted is not None
                secret = self.box.open(row.secret_encrypted, context=self._context(holder.principal_id))
                step = totp.matching_step(secret, code, now=now.timestamp())
                if step is None:
                    continue
                # Each code works once (RFC 6238 section 5.2): the (factor, time step) pair is one-time, in the
                # database, across every broker process.
                queries.consume_once(
                    session,
                    kind="mfa_totp",
                    key_hmac=self.keys.macs("mfa-totp-step", f"{row.id}:{step}"),
                    expires_at=now + timedelta(seconds=totp.STEP_SECONDS * (2 * totp.DRIFT_STEPS + 2)),
                    message=TOTP_REPLAY_MESSAGE,
                )
                resealed = None
                if self.box.needs_rotation(row.secret_encrypted):
                    resealed = self.box.seal(secret, context=self._context(holder.principal_id))
                queries.used_mfa_factor(session, factor_id=row.id, now=now, secret_encrypted=resealed)
                return Factor(TOTP, MfaLevel.MFA, now)
            raise AuthenticationFailed(
                "That code is not right. Check your authenticator app.", reason="mfa.totp_invalid"
            )

        return check

    def _new_recovery_codes(self, session: Session, principal_id: int) -> list[str]:
        codes = recovery.generate(self.config.recovery_codes)
        hmacs = [self._recovery_hmac(principal_id, recovery.normalize(c) or "") for c in codes]
        queries.replace_recovery_codes(session, principal_id=principal_id, code_hmacs=hmacs, now=self.clock())
        return codes

    def _recovery_hmac(self, principal_id: int, normalized: str) -> str:
        return self.keys.mac("mfa-recovery", f"{principal_id}:{normalized}")

    def _save_ceremony(self, session: Session, holder: Holder, kind: str, data: dict[str, Any]) -> None:
        key = self.keys.mac("webauthn-ceremony", f"{holder.session_hmac}:{kind}")
        queries.take_login_request(session, state_hmac=key)
        now = self.clock()
        queries.save_login_request(
            session,
            state_hmac=key,
            store=CEREMONY_STORE,
            browser_hmac=holder.session_hmac,
            data=data,
            now=now,
            expires_at=now + timedelta(seconds=wa.CEREMONY_TTL_SECONDS),
        )

    def _take_ceremony(self, session: Session, holder: Holder, kind: str) -> dict[str, Any]:
        """The challenge this session was given, once; a second answer to it finds nothing."""
        row = queries.take_login_request(
            session, state_hmac=self.keys.mac("webauthn-ceremony", f"{holder.session_hmac}:{kind}")
        )
        if row is None or row.store != CEREMONY_STORE or row.browser_hmac != holder.session_hmac:
            raise InvalidRequest(
                "This security-key request was already answered or never started. Try again.",
                reason="webauthn.ceremony_unknown",
            )
        if row.expires_at <= self.clock():
            raise InvalidRequest("The security-key request expired. Try again.", reason="webauthn.ceremony_expired")
        return dict(row.data)

    def _user_handle(self, principal_id: int) -> bytes:
        # Opaque and stable per principal (W3C WebAuthn section 14.6.1: no personal data in the user handle).
        return bytes.fromhex(self.keys.mac("webauthn-user", str(principal_id)))[:32]
