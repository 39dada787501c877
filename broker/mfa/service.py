"""The MFA use cases: enrol and remove factors, verify them as a step-up, lock out guessing, reset.

A factor completed here is added to the session's evidence (``Identity.mfa``, with its time) and the session
row is updated, so every later issuance (console, CLI page, API) sees it through the same pure policy. Every
attempt runs in one transaction that row-locks the principal's and the client address's failure counters:
a lockout is checked before the code, and the outcome, the counters and exactly one audit event commit
together.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from broker.audit import AuditTrail, Clock, Context
from broker.errors import (
    TOTP_REPLAY_MESSAGE,
    AccessDenied,
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
from broker.policy import rule_matches
from broker.settings import Settings
from broker.store import queries
from broker.store.db import Database, Session
from broker.store.models import MfaFactor

TOTP, WEBAUTHN, RECOVERY = "totp", "webauthn", "recovery_code"
# RFC 8176 amr names for what the broker checked: a one-time password, a hardware key; recovery codes have
# no registered name.
AMR = {TOTP: "otp", WEBAUTHN: "hwk", RECOVERY: "recovery_code"}
BROKER_METHODS = frozenset(AMR)
# A pending operator reset must be approved within this time.
RESET_TTL_SECONDS = 900
_CEREMONY_STORE = "webauthn"
_RESET_STORE = "mfa-reset"


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


def _level_of(row: MfaFactor) -> MfaLevel:
    if row.kind == WEBAUTHN and row.user_verified:
        return MfaLevel.PHISHING_RESISTANT
    return MfaLevel.MFA


class MfaService:
    def __init__(self, settings: Settings, *, db: Database, keys: Keys, audit: AuditTrail, clock: Clock) -> None:
        self.settings = settings
        self.config = settings.mfa
        self.db = db
        self.keys = keys
        self.audit = audit
        self.clock = clock
        raw = [k.get_secret_value().encode() for k in self.config.encryption_keys] or [keys.key("mfa-secrets")]
        self.box = SecretBox(raw)
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

    # ------------------------------------------------------------ reading

    def overview(self, principal_id: int) -> Overview:
        with self.db.transaction() as session:
            rows = queries.list_mfa_factors(session, principal_id=principal_id)
            views = [FactorView(r.id, r.kind, r.name, r.created_at, r.last_used_at, _level_of(r)) for r in rows]
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

    # ------------------------------------------------------------ the attempt: lockout, check, audit

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

    # ------------------------------------------------------------ TOTP

    def begin_totp(self, holder: Holder, ctx: Context, *, name: str) -> TotpEnrolment:
        """A new pending TOTP factor; its secret is returned once, to show, and stored only encrypted."""
        name = _factor_name(name, "Authenticator app")
        now = self.clock()
        secret = totp.new_secret()
        self._require_manage(holder, ctx, "totp.begin")
        with self.db.transaction() as session:
            queries.delete_pending_totp(session, principal_id=holder.principal_id)
            row = queries.add_mfa_factor(
                session,
                principal_id=holder.principal_id,
                kind=TOTP,
                name=name,
                created_at=now,
                secret_encrypted=self.box.seal(secret, context=self._context(holder.principal_id)),
                sign_count=0,
                user_verified=False,
            )
            if row is None:
                raise InvalidRequest(
                    "You already have a factor with this name. Choose another.", reason="mfa.name_taken"
                )
            factor_id = row.id
        uri = totp.provisioning_uri(secret, account=holder.identity.principal, issuer=self.config.totp_issuer)
        return TotpEnrolment(factor_id, secret, uri, totp.qr_data_uri(uri))

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
                    key_hmac=self.keys.mac("mfa-totp-step", f"{row.id}:{step}"),
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

    def confirm_totp(self, holder: Holder, ctx: Context, *, factor_id: int, code: str) -> Verified:
        """Confirm an enrolment with its first valid code; the first factor also gets recovery codes."""

        def after(session: Session, identity: Identity) -> list[str] | None:
            if queries.count_recovery_codes(session, principal_id=holder.principal_id):
                return None
            return self._new_recovery_codes(session, holder.principal_id)

        identity, codes = self._attempt(
            holder, ctx, TOTP, self._totp_check(holder, code, factor_id=factor_id), after=after
        )
        self.audit.record(
            self.db, event="mfa.enrol", outcome="ok", reason="mfa.totp_confirmed", identity=identity, ctx=ctx
        )
        return Verified(identity, codes)

    def verify_totp(self, holder: Holder, ctx: Context, *, code: str) -> Verified:
        identity, _ = self._attempt(holder, ctx, TOTP, self._totp_check(holder, code, factor_id=None))
        return Verified(identity)

    # ------------------------------------------------------------ recovery codes

    def _new_recovery_codes(self, session: Session, principal_id: int) -> list[str]:
        codes = recovery.generate(self.config.recovery_codes)
        hmacs = [self._recovery_hmac(principal_id, recovery.normalize(c) or "") for c in codes]
        queries.replace_recovery_codes(session, principal_id=principal_id, code_hmacs=hmacs, now=self.clock())
        return codes

    def _recovery_hmac(self, principal_id: int, normalized: str) -> str:
        return self.keys.mac("mfa-recovery", f"{principal_id}:{normalized}")

    def regenerate_recovery_codes(self, holder: Holder, ctx: Context) -> list[str]:
        self._require_manage(holder, ctx, "recovery.regenerate")
        with self.db.transaction() as session:
            if not queries.list_mfa_factors(session, principal_id=holder.principal_id):
                raise InvalidRequest("Add a factor first; recovery codes stand in for one.", reason="mfa.no_factor")
            codes = self._new_recovery_codes(session, holder.principal_id)
            self.audit.append(
                session,
                event="mfa.enrol",
                outcome="ok",
                reason="mfa.recovery_regenerated",
                identity=holder.identity,
                ctx=ctx,
                detail={"count": len(codes)},
            )
        return codes

    def verify_recovery(self, holder: Holder, ctx: Context, *, code: str) -> Verified:
        def check(session: Session) -> Factor:
            normalized = recovery.normalize(code)
            now = self.clock()
            if normalized is None or not queries.use_recovery_code(
                session,
                principal_id=holder.principal_id,
                code_hmac=self._recovery_hmac(holder.principal_id, normalized),
                now=now,
            ):
                raise AuthenticationFailed(
                    "That recovery code is not valid, or was used already.", reason="mfa.recovery_invalid"
                )
            return Factor(RECOVERY, MfaLevel.MFA, now)

        identity, _ = self._attempt(holder, ctx, RECOVERY, check)
        return Verified(identity)

    # ------------------------------------------------------------ WebAuthn

    def _save_ceremony(self, session: Session, holder: Holder, kind: str, data: dict[str, Any]) -> None:
        key = self.keys.mac("webauthn-ceremony", f"{holder.session_hmac}:{kind}")
        queries.take_login_request(session, state_hmac=key)
        now = self.clock()
        queries.save_login_request(
            session,
            state_hmac=key,
            store=_CEREMONY_STORE,
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
        if row is None or row.store != _CEREMONY_STORE or row.browser_hmac != holder.session_hmac:
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

    def begin_registration(self, holder: Holder, ctx: Context, *, name: str) -> dict[str, Any]:
        name = _factor_name(name, "Security key")
        self._require_manage(holder, ctx, "webauthn.begin")
        with self.db.transaction() as session:
            existing = [
                r.credential_id
                for r in queries.list_mfa_factors(session, principal_id=holder.principal_id, confirmed_only=False)
                if r.kind == WEBAUTHN and r.credential_id
            ]
            # User verification is always asked for at registration: the key must be able to give
            # phishing-resistant MFA later.
            ceremony = wa.registration(
                self.rp,
                user_handle=self._user_handle(holder.principal_id),
                user_name=holder.identity.principal,
                exclude=existing,
                require_uv=True,
            )
            self._save_ceremony(session, holder, "register", {"challenge": ceremony.challenge, "name": name})
        return wa.options_dict(ceremony)

    def finish_registration(self, holder: Holder, ctx: Context, *, payload: str) -> FactorView:
        now = self.clock()
        try:
            with self.db.transaction() as session:
                data = self._take_ceremony(session, holder, "register")
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, event="mfa.enrol", identity=holder.identity, ctx=ctx) from None
        try:
            new = wa.verify_registration(self.rp, payload, challenge=str(data["challenge"]), require_uv=True)
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="mfa.enrol", identity=holder.identity, ctx=ctx, detail={"method": WEBAUTHN}
            ) from None
        with self.db.transaction() as session:
            row = queries.add_mfa_factor(
                session,
                principal_id=holder.principal_id,
                kind=WEBAUTHN,
                name=str(data["name"]),
                created_at=now,
                confirmed_at=now,
                credential_id=new.credential_id,
                public_key=new.public_key,
                sign_count=new.sign_count,
                user_verified=new.user_verified,
            )
            if row is not None:
                self.audit.append(
                    session,
                    event="mfa.enrol",
                    outcome="ok",
                    reason="mfa.webauthn_registered",
                    identity=holder.identity,
                    ctx=ctx,
                    detail={"name": row.name, "user_verified": new.user_verified, "factor_id": row.id},
                )
                view = FactorView(row.id, row.kind, row.name, row.created_at, None, _level_of(row))
        if row is None:
            error = InvalidRequest(
                "This security key, or a factor with this name, is registered already.",
                reason="webauthn.already_registered",
            )
            raise self.audit.deny(self.db, error, event="mfa.enrol", identity=holder.identity, ctx=ctx)
        return view

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

    # ------------------------------------------------------------ removal

    def remove(self, holder: Holder, ctx: Context, *, factor_id: int) -> None:
        self._require_manage(holder, ctx, "remove")
        with self.db.transaction() as session:
            row = queries.get_mfa_factor(session, principal_id=holder.principal_id, factor_id=factor_id)
            if row is None:
                raise NotFound("There is no such factor.", reason="mfa.no_factor")
            name, kind = row.name, row.kind
            queries.delete_mfa_factor(session, principal_id=holder.principal_id, factor_id=factor_id)
            self.audit.append(
                session,
                event="mfa.remove",
                outcome="ok",
                reason="mfa.factor_removed",
                identity=holder.identity,
                ctx=ctx,
                detail={"factor_id": factor_id, "kind": kind, "name": name},
            )

    # ------------------------------------------------------------ operator reset (two people, two steps)

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
                store=_RESET_STORE,
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
            if row is None or row.store != _RESET_STORE or row.expires_at <= self.clock():
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
                if row is None or row.store != _RESET_STORE or row.expires_at <= now:
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


def _factor_name(name: str, default: str) -> str:
    cleaned = " ".join(name.split())[:64]
    if any(not c.isprintable() for c in cleaned):
        raise InvalidRequest("A factor name may hold printable characters only.", reason="mfa.name_invalid")
    return cleaned or default
