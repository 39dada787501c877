"""OAuth 2.0 Device Authorization Grant (RFC 8628) for the credential helper where no browser can be opened.

1. ``POST /oauth2/device_authorization`` (section 3.1): the helper gets a device code (kept secret, polled
   with) and a user code (shown in the terminal).
2. ``/device`` (section 3.3): the person, signed in to the broker in any browser, enters or confirms the user
   code; the page shows what is being authorized, from which address and when (section 5.4, remote phishing).
3. ``POST /oauth2/token`` with ``grant_type=urn:ietf:params:oauth:grant-type:device_code`` (section 3.4):
   ``authorization_pending`` until confirmed, ``slow_down`` (and 5 more seconds of interval, for good) when
   polled faster than the interval, ``access_denied``, ``expired_token``; then the tokens, exactly once.

Both codes are stored only as HMACs; the user code is unique in the database, and the move to ``consumed`` is
one conditional UPDATE, so two broker processes cannot both hand out tokens for one device code. A replayed
device code revokes the sign-in it produced (the analogue of RFC 6749 section 4.1.2 for codes).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.context import Context
from broker.errors import (
    AuthorizationDeclined,
    AuthorizationPending,
    BrokerError,
    ExpiredToken,
    InvalidGrant,
    InvalidRequest,
    ServiceUnavailable,
    SlowDown,
)
from broker.identity import Identity
from broker.oauth.clients import AuthenticatedClient
from broker.oauth.grants import Params
from broker.oauth.refresh import CHANNEL, CliStep, Started, check_cli_client, iso
from broker.signin.sessions import CurrentSession
from broker.store import queries
from broker.store.models import DeviceAuthorization

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
VERIFICATION_PATH = "/device"
# RFC 8628 section 6.1: consonants only (no words can be spelled), case-insensitive, 8 characters shown as
# XXXX-XXXX: 20^8 (about 2^34.6) codes, while a code lives minutes and guesses need a signed-in session.
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
# Section 3.5 does not say how exact "too fast" is; a client that slept the interval must not be punished for
# network and scheduling jitter, so a poll 10% early still counts as on time.
POLL_TOLERANCE = 0.9
SLOW_DOWN_SECONDS = 5  # section 3.5: "the interval MUST be increased by 5 seconds"
MAX_CODE_CHARS = 256


def normalize_user_code(value: str | None) -> str | None:
    """The canonical user code (``BCDFGHJK``) from what a person typed, or None if it cannot be one."""
    if not value or len(value) > 32:
        return None
    code = "".join(c for c in value.upper() if c not in "- ")
    if len(code) != USER_CODE_LENGTH or any(c not in USER_CODE_ALPHABET for c in code):
        return None
    return code


def display_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


@dataclass(frozen=True)
class PendingDevice:
    """What the /device page shows before the person confirms."""

    user_code: str
    requester_ip: str | None
    requester_agent: str | None
    created_at: datetime
    expires_at: datetime


class DeviceFlow(CliStep):
    """The device authorization endpoint and the /device confirmation."""

    def _user_code_hmac(self, code: str) -> str:
        return self.keys.mac("device-user-code", code)

    def authorize(self, params: Params, ctx: Context) -> dict[str, Any]:
        """Section 3.1/3.2: a new device code and user code for the public client ``broker-cli``."""
        try:
            check_cli_client(params.get("client_id"))
        except BrokerError as exc:
            raise self.audit.deny(self.db, exc, event="device_authorization", channel=CHANNEL, ctx=ctx) from None
        now = self.clock()
        expires = now + timedelta(seconds=self.config.device_code_ttl_seconds)
        device_code = secrets.token_urlsafe(32)
        for _ in range(5):  # a user-code collision with a live code is rare; draw again
            user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
            row = dict(
                device_code_hmac=self.keys.mac("device-code", device_code),
                user_code_hmac=self._user_code_hmac(user_code),
                client_id=params.get("client_id") or "",
                status="pending",
                interval_seconds=self.config.device_poll_interval_seconds,
                created_at=now,
                expires_at=expires,
                requester_ip=ctx.client_ip,
                requester_agent=ctx.user_agent,
            )
            with self.db.transaction() as session:
                if queries.add_device_authorization(session, **row):
                    break
        else:
            raise ServiceUnavailable(reason="device_user_code_exhausted")
        verification = self.issuer + VERIFICATION_PATH
        shown = display_user_code(user_code)
        return {
            "device_code": device_code,
            "user_code": shown,
            "verification_uri": verification,
            "verification_uri_complete": f"{verification}?user_code={shown}",
            "expires_in": self.config.device_code_ttl_seconds,
            "interval": self.config.device_poll_interval_seconds,
        }

    def _pending_row(self, user_code: str | None, now: datetime) -> DeviceAuthorization:
        code = normalize_user_code(user_code)
        if code is None:
            raise InvalidRequest("That is not a sign-in code. Check the code in your terminal.", reason="user_code_bad")
        with self.db.transaction() as session:
            row = queries.get_device_authorization(session, user_code_hmac=self._user_code_hmac(code))
        if row is None or row.status != "pending" or row.expires_at <= now:
            raise InvalidRequest(
                "That code is unknown, already used or expired. Run `broker login` again for a new one.",
                reason="user_code_unknown",
            )
        return row

    def lookup(self, user_code: str | None, identity: Identity, ctx: Context) -> PendingDevice:
        """The pending request for a typed code, for the confirmation page (a wrong code is audited)."""
        try:
            row = self._pending_row(user_code, self.clock())
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="device_confirm", identity=identity, channel=CHANNEL, ctx=ctx
            ) from None
        code = normalize_user_code(user_code)
        assert code is not None
        return PendingDevice(
            display_user_code(code), row.requester_ip, row.requester_agent, row.created_at, row.expires_at
        )

    def decide(self, user_code: str | None, *, approve: bool, current: CurrentSession, ctx: Context) -> None:
        """The signed-in person approves (binding their identity and MFA level) or denies the request."""
        identity = current.identity
        now = self.clock()
        try:
            row = self._pending_row(user_code, now)
            values: dict[str, Any] = {"decided_at": now}
            if approve:
                values.update(identity=identity.to_json(), session_expires_at=current.expires_at)
            with self.db.transaction() as session:
                moved = queries.move_device_authorization(
                    session,
                    device_code_hmac=row.device_code_hmac,
                    from_status="pending",
                    to_status="approved" if approve else "denied",
                    **values,
                )
                if moved:
                    self.audit.append(
                        session,
                        event="device_confirm",
                        outcome="ok" if approve else "denied",
                        reason="approved" if approve else "denied_by_user",
                        identity=identity,
                        channel=CHANNEL,
                        ctx=ctx,
                        detail={"requester_ip": row.requester_ip, "mfa": identity.mfa.level.label},
                    )
            if not moved:
                raise InvalidRequest("That code was already answered.", reason="user_code_already_decided")
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="device_confirm", identity=identity, channel=CHANNEL, ctx=ctx
            ) from None


class DeviceCodeGrant(CliStep):
    """``grant_type=urn:ietf:params:oauth:grant-type:device_code`` (RFC 8628 section 3.4)."""

    grant_type = GRANT_TYPE
    public_client_id = "broker-cli"

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        identity: Identity | None = None
        detail: dict[str, Any] = {"grant_type": GRANT_TYPE}
        started: Started | None = None
        try:
            device_code = params.get("device_code")
            if device_code is None:
                raise InvalidRequest("device_code is required.", reason="device_code_missing")
            if len(device_code) > MAX_CODE_CHARS:
                raise InvalidGrant("This device code is not valid.", reason="device_code_unknown")
            now = self.clock()
            outcome, replayed_family = "", None
            with self.db.transaction() as session:
                key = self.keys.mac("device-code", device_code)
                row = queries.get_device_authorization(session, device_code_hmac=key)
                if row is None:
                    outcome = "unknown"
                elif row.status == "consumed":
                    outcome, replayed_family = "replay", row.family_id
                elif row.expires_at <= now:
                    outcome = "expired"
                else:
                    interval = row.interval_seconds
                    last = row.last_polled_at
                    too_fast = last is not None and (now - last).total_seconds() < interval * POLL_TOLERANCE
                    if too_fast:
                        interval += SLOW_DOWN_SECONDS
                    queries.record_device_poll(session, device_code_hmac=key, now=now, interval_seconds=interval)
                    detail["interval"] = interval
                    if too_fast:
                        outcome = "slow_down"
                    elif row.status == "pending":
                        outcome = "pending"
                    elif row.status == "denied":
                        moved = queries.move_device_authorization(
                            session, device_code_hmac=key, from_status="denied", to_status="consumed"
                        )
                        outcome = "denied" if moved else "replay"
                    elif row.status == "approved" and queries.move_device_authorization(
                        session, device_code_hmac=key, from_status="approved", to_status="consumed"
                    ):
                        assert row.identity is not None and row.session_expires_at is not None
                        identity = Identity.from_json(row.identity)
                        started = self.sessions.start(
                            session,
                            identity=identity,
                            session_expires_at=row.session_expires_at,
                            grant_type=GRANT_TYPE,
                            ctx=ctx,
                        )
                        queries.move_device_authorization(
                            session,
                            device_code_hmac=key,
                            from_status="consumed",
                            to_status="consumed",
                            family_id=started.family_id,
                        )
                        self.audit.append(
                            session,
                            event="cli_login",
                            outcome="ok",
                            reason="device_code",
                            identity=identity,
                            channel=CHANNEL,
                            ctx=ctx,
                            detail={**detail, "family": started.family_id, "expires_at": iso(started.expires_at)},
                        )
                        outcome = "issued"
                    else:
                        outcome = "replay"  # another process consumed it a moment ago
            if outcome == "pending":
                # Not a refusal: the normal answer while the person has not confirmed yet (not audited).
                raise AuthorizationPending()
            if outcome == "unknown":
                raise InvalidGrant("This device code is not valid.", reason="device_code_unknown")
            if outcome == "expired":
                raise ExpiredToken(reason="device_code_expired")
            if outcome == "slow_down":
                raise SlowDown(reason="device_poll_too_fast")
            if outcome == "denied":
                raise AuthorizationDeclined(reason="device_denied_by_user")
            if outcome == "replay":
                detail["family_revoked"] = self.sessions.revoke_family(replayed_family, "device_code_replay")
                raise InvalidGrant("This device code was already used.", reason="device_code_replay")
        except AuthorizationPending:
            raise
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="cli_login", identity=identity, channel=CHANNEL, ctx=ctx, detail=detail
            ) from None
        assert started is not None and identity is not None
        return self.sessions.token_response(
            family_id=started.family_id,
            identity=identity,
            expires_at=started.expires_at,
            refresh_token=started.refresh_token,
        )
