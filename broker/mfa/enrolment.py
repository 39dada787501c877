"""Enrolling and removing factors: TOTP, WebAuthn security keys and recovery codes."""

from __future__ import annotations

from typing import Any

from broker.context import Context
from broker.errors import (
    BrokerError,
    InvalidRequest,
    NotFound,
)
from broker.identity import Identity
from broker.mfa import totp
from broker.mfa import webauthn as wa
from broker.mfa.attempts import MfaCore
from broker.mfa.views import (
    TOTP,
    WEBAUTHN,
    FactorView,
    Holder,
    TotpEnrolment,
    Verified,
    factor_name,
    level_of,
)
from broker.store import queries
from broker.store.db import Session


class Enrolment(MfaCore):
    """Add, confirm and remove a principal's factors (changing them needs a recent factor once one exists)."""

    def begin_totp(self, holder: Holder, ctx: Context, *, name: str) -> TotpEnrolment:
        """A new pending TOTP factor; its secret is returned once, to show, and stored only encrypted."""
        name = factor_name(name, "Authenticator app")
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

    def begin_registration(self, holder: Holder, ctx: Context, *, name: str) -> dict[str, Any]:
        name = factor_name(name, "Security key")
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
                view = FactorView(row.id, row.kind, row.name, row.created_at, None, level_of(row))
        if row is None:
            error = InvalidRequest(
                "This security key, or a factor with this name, is registered already.",
                reason="webauthn.already_registered",
            )
            raise self.audit.deny(self.db, error, event="mfa.enrol", identity=holder.identity, ctx=ctx)
        return view

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
