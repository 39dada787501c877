"""Browser sessions: started by every sign-in, found again on every page, ended by signing out.

Server-side sessions (docs/security.md, "Sessions"): the cookie holds a random id and the database only its
HMAC; a new id at every sign-in, and every sign-in ends the session the browser held before, whoever it
belonged to, so a planted session never stays signed in beside the new one.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import AccessDenied, LoginRequired
from broker.identity import Identity
from broker.keys import Keys
from broker.scim.directory import Directory
from broker.settings import SessionSettings
from broker.store import queries
from broker.store.db import Database

# What a disabled person reads, at sign-in and on the next page after being disabled.
DISABLED_MESSAGE = "This account is disabled. Ask an administrator to enable it again."
# Session ids are 43 characters; anything much longer is not one of ours and is not looked up.
MAX_SESSION_ID_CHARS = 128


@dataclass(frozen=True)
class SignedIn:
    session_id: str
    identity: Identity


@dataclass(frozen=True)
class CurrentSession:
    id_hmac: str
    principal_id: int
    identity: Identity
    expires_at: datetime


class Sessions:
    """Start, find and end browser sessions. Each start is the sign-in's audit event."""

    def __init__(
        self,
        settings: SessionSettings,
        *,
        db: Database,
        audit: AuditTrail,
        keys: Keys,
        directory: Directory,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.keys = keys
        self.directory = directory
        self.clock = clock

    def hmac(self, session_id: str) -> str:
        """The session id's HMAC under the newest root key: what a new session is stored under."""
        return self.keys.mac("session", session_id)

    def hmacs(self, session_id: str) -> list[str]:
        """The session id's HMAC under every listed root key: sessions started before a rotation live on."""
        return self.keys.macs("session", session_id)

    def csrf_token(self, secret: str) -> str:
        """The CSRF token of forms shown to the holder of ``secret`` (a session or pre-login cookie)."""
        return self.keys.mac("csrf", secret)[:43]

    def csrf_matches(self, secret: str, token: str) -> bool:
        """True if ``token`` is the CSRF token of ``secret`` under any listed root key (compared in constant
        time, every candidate checked)."""
        found = False
        for candidate in self.keys.macs("csrf", secret):
            found |= hmac.compare_digest(candidate[:43], token)
        return found

    def start(
        self,
        identity: Identity,
        ctx: Context,
        *,
        previous_session: str | None,
        event: str = "login",
        detail: dict[str, object] | None = None,
    ) -> SignedIn:
        """Check the person may sign in, end the browser's previous session, create a new one, audit it.

        Refused (and audited as ``event``) when provisioning retired the person (``scim.*``) or an operator
        disabled them (``principal_disabled``).
        """
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        absolute = now + timedelta(hours=self.settings.absolute_timeout_hours)
        try:
            # A person their SCIM client deactivated, deleted or never provisioned does not get a session.
            self.provisioned(identity)
        except AccessDenied as exc:
            raise self.audit.deny(self.db, exc, event=event, identity=identity, ctx=ctx) from None
        with self.db.transaction() as session:
            if previous_session and len(previous_session) <= MAX_SESSION_ID_CHARS:
                previous = queries.find_session(session, id_hmacs=self.hmacs(previous_session))
                if previous is not None:
                    queries.delete_session(session, id_hmac=previous.id_hmac)
            principal = queries.touch_principal(session, identity=identity, now=now)
            if principal.disabled:
                raise self.audit.deny(
                    self.db,
                    AccessDenied(DISABLED_MESSAGE, reason="principal_disabled"),
                    event=event,
                    identity=identity,
                    ctx=ctx,
                )
            self.directory.link(session, identity, principal_id=principal.id, now=now)
            queries.create_session(
                session,
                id_hmac=self.hmac(session_id),
                principal_id=principal.id,
                identity=identity,
                now=now,
                expires_at=absolute,
                client_ip=ctx.client_ip,
                user_agent=ctx.user_agent,
                key_id=self.keys.current_id,
            )
            self.audit.append(
                session,
                event=event,
                outcome="ok",
                reason="break_glass" if identity.break_glass else "authenticated",
                identity=identity,
                ctx=ctx,
                detail={
                    "mfa": identity.mfa.level.label,
                    "amr": list(identity.mfa.methods),
                    "break_glass": identity.break_glass,
                    **(detail or {}),
                },
            )
        return SignedIn(session_id, identity)

    def provisioned(self, identity: Identity) -> Identity:
        if not self.directory.governs(identity.store):
            return identity
        with self.db.transaction() as session:
            return self.directory.resolve(session, identity)

    def current(self, session_id: str | None) -> CurrentSession:
        """The live session for this id, or LoginRequired (unknown, revoked, idle too long, too old)."""
        if not session_id or len(session_id) > MAX_SESSION_ID_CHARS:
            raise LoginRequired()
        now = self.clock()
        id_hmacs = self.hmacs(session_id)
        idle = timedelta(minutes=self.settings.idle_timeout_minutes)
        with self.db.transaction() as session:
            row = queries.find_session(session, id_hmacs=id_hmacs)
            id_hmac = row.id_hmac if row is not None else id_hmacs[0]
            if row is None or row.revoked_at is not None or row.expires_at <= now or row.last_seen_at + idle <= now:
                disabled = (
                    row is not None
                    and row.revoked_at is not None
                    and queries.principal_id_disabled(session, principal_id=row.principal_id)
                )
                if row is not None and not disabled:
                    queries.delete_session(session, id_hmac=id_hmac)
                if disabled:
                    # Said at once, on the next page, rather than after another trip through the IdP.
                    raise AccessDenied(DISABLED_MESSAGE, reason="principal_disabled")
                raise LoginRequired()
            queries.touch_session(session, id_hmac=id_hmac, now=now)
            return CurrentSession(id_hmac, row.principal_id, Identity.from_json(row.identity), row.expires_at)

    def end(self, session_id: str | None, ctx: Context) -> Identity | None:
        """End the session and audit the sign-out; the identity it held, or None when there was none."""
        if not session_id:
            return None
        with self.db.transaction() as session:
            row = queries.find_session(session, id_hmacs=self.hmacs(session_id))
            if row is None:
                return None
            id_hmac = row.id_hmac
            identity = Identity.from_json(row.identity)
            queries.delete_session(session, id_hmac=id_hmac)
            self.audit.append(session, event="logout", outcome="ok", reason="user_logout", identity=identity, ctx=ctx)
        return identity
