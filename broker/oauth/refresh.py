"""CLI sign-ins: broker refresh tokens, their rotation and revocation, and the bearer check of the CLI API.

- One CLI sign-in is a *family* (``refresh_families``): the identity and MFA level reached at login, and an
  absolute end (``oauth.cli.refresh_token_ttl_hours``, never later than the browser session that approved
  it). Refresh tokens rotate inside that window and never extend it.
- Refresh grant (RFC 6749 section 6) with rotation and reuse detection (RFC 9700 section 4.14.2): each
  refresh token works once; presenting one that was already rotated means two parties hold it, so the whole
  family is revoked and audited.
- Revocation (RFC 7009): a refresh token or an access token of the sign-in revokes the family.
- Access tokens are RFC 9068 JWTs (``broker.oauth.tokens``) for the audience ``<public_url>/api/v1`` with
  ``client_id`` ``broker-cli`` and ``sid`` = family id; the family is checked on every API call, so a
  revocation takes effect at once rather than when the access token expires.

Refresh tokens are opaque random values; only their HMACs are stored.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypedDict, Unpack

from broker.audit import AuditTrail
from broker.context import Clock, Context
from broker.errors import BrokerError, InvalidClient, InvalidGrant, InvalidRequest, InvalidToken
from broker.identity import Channel, Identity
from broker.keys import Keys
from broker.oauth.clients import AuthenticatedClient
from broker.oauth.grants import Params
from broker.oauth.tokens import TokenService
from broker.settings import CliSettings
from broker.store import queries
from broker.store.db import Database, Session

CLI_CLIENT_ID = "broker-cli"
API_PATH = "/api/v1"
# A recognisable prefix lets secret scanners (and people) tell a leaked broker refresh token at a glance.
REFRESH_TOKEN_PREFIX = "bkr_rt_"  # noqa: S105
MAX_TOKEN_CHARS = 4096
CHANNEL = Channel.CLI.value


def iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def check_cli_client(client_id: str | None) -> None:
    """RFC 8252 section 8.4: the helper is a public client identified by its client_id alone."""
    if client_id != CLI_CLIENT_ID:
        raise InvalidClient("Unknown client: the credential helper is client_id broker-cli.", reason="client.unknown")


@dataclass(frozen=True)
class CliSignIn:
    """A verified bearer of the CLI API: the sign-in (family) and the identity captured at login."""

    family_id: str
    identity: Identity
    expires_at: datetime


@dataclass(frozen=True)
class Started:
    family_id: str
    expires_at: datetime
    refresh_token: str


class CliDeps(TypedDict):
    """What the credential helper's flows are built with (each takes these as keyword arguments)."""

    config: CliSettings
    issuer: str
    db: Database
    audit: AuditTrail
    keys: Keys
    clock: Clock


class CliFlow:
    """What every credential-helper flow holds (:class:`CliDeps`), set once here."""

    def __init__(self, **deps: Unpack[CliDeps]) -> None:
        self.config = deps["config"]
        self.issuer = deps["issuer"]
        self.db = deps["db"]
        self.audit = deps["audit"]
        self.keys = deps["keys"]
        self.clock = deps["clock"]


class CliSessions(CliFlow):
    """Creates, rotates, revokes and checks CLI sign-ins. One per process (``OAuthServer.cli``)."""

    def __init__(self, tokens: TokenService, **deps: Unpack[CliDeps]) -> None:
        super().__init__(**deps)
        self.tokens = tokens
        self.audience = self.issuer + API_PATH

    def _mac(self, token: str) -> str:
        return self.keys.mac("cli-refresh-token", token)

    # ------------------------------------------------------------ login and token responses

    def start(
        self,
        session: Session,
        *,
        identity: Identity,
        session_expires_at: datetime,
        grant_type: str,
        ctx: Context,
    ) -> Started:
        """A new family inside the caller's transaction (which also holds the grant's audit event)."""
        now = self.clock()
        expires = min(now + timedelta(hours=self.config.refresh_token_ttl_hours), session_expires_at)
        principal = queries.upsert_principal(session, identity=identity, now=now)
        if principal.disabled:
            raise InvalidGrant("This account is disabled.", reason="principal_disabled")
        token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
        family = queries.create_refresh_family(
            session,
            token_hmac=self._mac(token),
            key_id=self.keys.current_id,
            id=str(uuid.uuid4()),
            principal_id=principal.id,
            client_id=CLI_CLIENT_ID,
            grant_type=grant_type,
            identity=identity.to_json(),
            created_at=now,
            expires_at=expires,
            client_ip=ctx.client_ip,
        )
        return Started(family.id, expires, token)

    def token_response(
        self, *, family_id: str, identity: Identity, expires_at: datetime, refresh_token: str
    ) -> dict[str, Any]:
        """RFC 6749 section 5.1, plus who is signed in and until when (the helper prints them)."""
        remaining = int((expires_at - self.clock()).total_seconds())
        issued = self.tokens.issue_access_token(
            subject=identity.principal,
            audience=self.audience,
            client_id=CLI_CLIENT_ID,
            ttl_seconds=max(1, remaining),
            extra_claims={"sid": family_id},
        )
        return {
            "access_token": issued.token,
            "token_type": "Bearer",
            "expires_in": issued.expires_in,
            "refresh_token": refresh_token,
            "principal": identity.principal,
            "mfa": identity.mfa.level.label,
            "session_expires_at": iso(expires_at),
        }

    def revoke_family(self, family_id: str | None, reason: str) -> bool:
        if family_id is None:
            return False
        with self.db.transaction() as session:
            return queries.revoke_refresh_family(session, family_id=family_id, now=self.clock(), reason=reason)

    # ------------------------------------------------------------ refresh (RFC 6749 section 6)

    def refresh(self, params: Params, ctx: Context) -> dict[str, Any]:
        family_id: str | None = None
        identity: Identity | None = None
        detail: dict[str, Any] = {"grant_type": "refresh_token"}
        try:
            token = params.get("refresh_token")
            if token is None:
                raise InvalidRequest("refresh_token is required.", reason="refresh_token_missing")
            if len(token) > MAX_TOKEN_CHARS:
                raise InvalidGrant("This refresh token is not valid.", reason="refresh_token_unknown")
            now = self.clock()
            new_token = REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)
            reused = False
            with self.db.transaction() as session:
                found = queries.get_refresh_token(session, token_hmac=self.keys.macs("cli-refresh-token", token))
                if found is None:
                    raise InvalidGrant("This refresh token is not valid.", reason="refresh_token_unknown")
                row, family = found
                family_id, identity = family.id, Identity.from_json(family.identity)
                detail.update(family=family.id, generation=row.generation)
                expires_at = family.expires_at
                if family.revoked_at is not None:
                    raise InvalidGrant("This sign-in was revoked.", reason="refresh_family_revoked")
                if expires_at <= now:
                    raise InvalidGrant("This sign-in has ended.", reason="refresh_family_expired")
                if queries.rotate_refresh_token(
                    session,
                    token_hmac=row.token_hmac,
                    family_id=family.id,
                    generation=row.generation + 1,
                    new_token_hmac=self._mac(new_token),
                    now=now,
                    key_id=self.keys.current_id,
                ):
                    self.audit.append(
                        session,
                        event="cli_token",
                        outcome="ok",
                        reason="refreshed",
                        identity=identity,
                        channel=CHANNEL,
                        ctx=ctx,
                        detail={**detail, "generation": row.generation + 1},
                    )
                else:
                    reused = True
            if reused:
                # Two parties hold this token (RFC 9700 section 4.14.2): end the sign-in for both.
                detail["family_revoked"] = self.revoke_family(family_id, "refresh_token_reuse")
                raise InvalidGrant(
                    "This refresh token was already used; the sign-in was revoked. Run `broker login`.",
                    reason="refresh_token_reuse",
                )
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="cli_token", identity=identity, channel=CHANNEL, ctx=ctx, detail=detail
            ) from None
        assert family_id is not None and identity is not None
        return self.token_response(
            family_id=family_id, identity=identity, expires_at=expires_at, refresh_token=new_token
        )

    # ------------------------------------------------------------ revocation (RFC 7009)

    def revoke(self, params: Params, ctx: Context) -> None:
        """RFC 7009 section 2.1: revoke the sign-in a refresh or access token belongs to. An unknown token is
        not an error (section 2.2); it is audited as ignored."""
        detail: dict[str, Any] = {"token_type_hint": (params.get("token_type_hint") or "")[:40]}
        identity: Identity | None = None
        try:
            check_cli_client(params.get("client_id"))
            token = params.get("token")
            if token is None:
                raise InvalidRequest("token is required.", reason="revoke_token_missing")
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, event="cli_revoke", channel=CHANNEL, ctx=ctx, detail=detail) from None
        family_id = None
        if len(token) <= MAX_TOKEN_CHARS:
            with self.db.transaction() as session:
                found = queries.get_refresh_token(session, token_hmac=self.keys.macs("cli-refresh-token", token))
                if found is not None:
                    family_id, identity = found[1].id, Identity.from_json(found[1].identity)
            if family_id is None:
                family_id, identity = self._family_of_access_token(token)
        revoked = self.revoke_family(family_id, "revoked_by_client")
        self.audit.record(
            self.db,
            event="cli_revoke",
            outcome="ok" if family_id else "ignored",
            reason="revoked" if family_id else "token_unknown",
            identity=identity,
            channel=CHANNEL,
            ctx=ctx,
            detail={**detail, "family": family_id, "was_live": revoked},
        )

    def _family_of_access_token(self, token: str) -> tuple[str | None, Identity | None]:
        try:
            claims = self.tokens.verify_access_token(token, audience=self.audience)
        except InvalidRequest:
            return None, None
        sid = claims.get("sid")
        if claims.get("client_id") != CLI_CLIENT_ID or not isinstance(sid, str):
            return None, None
        with self.db.transaction() as session:
            family = queries.get_refresh_family(session, family_id=sid)
            return (family.id, Identity.from_json(family.identity)) if family else (None, None)

    # ------------------------------------------------------------ the CLI API's bearer check (RFC 6750)

    def authenticate(self, authorization: str | None, ctx: Context) -> CliSignIn:
        principal: str | None = None
        try:
            if not authorization or authorization[:7].lower() != "bearer ":
                raise InvalidToken("Send the access token as Authorization: Bearer.", reason="bearer_missing")
            token = authorization[7:].strip()
            if len(token) > MAX_TOKEN_CHARS:
                raise InvalidToken(reason="bearer_oversized")
            try:
                claims = self.tokens.verify_access_token(token, audience=self.audience)
            except InvalidRequest as exc:
                if exc.reason == "broker_token_key_revoked":
                    raise InvalidToken(exc.message, reason="bearer_key_revoked") from None
                raise InvalidToken(reason="bearer_invalid") from None
            principal = str(claims.get("sub", ""))[:256] or None
            sid = claims.get("sid")
            if claims.get("client_id") != CLI_CLIENT_ID or not isinstance(sid, str):
                raise InvalidToken(reason="bearer_not_cli")
            with self.db.transaction() as session:
                family = queries.get_refresh_family(session, family_id=sid)
                if family is None or family.revoked_at is not None:
                    raise InvalidToken(
                        "Your broker sign-in was revoked. Run `broker login` again.", reason="bearer_revoked"
                    )
                if family.expires_at <= self.clock():
                    raise InvalidToken("Your broker sign-in has ended. Run `broker login`.", reason="bearer_expired")
                return CliSignIn(family.id, Identity.from_json(family.identity), family.expires_at)
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="api_auth", principal=principal, channel=CHANNEL, ctx=ctx
            ) from None


class CliStep(CliFlow):
    """A flow built on the process's CLI sign-ins (device code, authorization code, their grants)."""

    def __init__(self, sessions: CliSessions, **deps: Unpack[CliDeps]) -> None:
        super().__init__(**deps)
        self.sessions = sessions


class RefreshTokenGrant:
    """``grant_type=refresh_token`` for the credential helper."""

    grant_type = "refresh_token"
    public_client_id = CLI_CLIENT_ID

    def __init__(self, sessions: CliSessions) -> None:
        self.sessions = sessions

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        return self.sessions.refresh(params, ctx)
