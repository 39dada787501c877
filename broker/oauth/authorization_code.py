"""Authorization code grant for the credential helper: RFC 6749 section 4.1 with PKCE (RFC 7636) and a
loopback redirect (RFC 8252), the default sign-in when a browser can be opened on the same machine.

- ``GET /oauth2/authorize``: ``response_type=code``, ``client_id=broker-cli``, ``redirect_uri`` on
  ``http://127.0.0.1:<port>/...`` or ``http://[::1]:<port>/...`` (section 7.3: any port; ``localhost`` is not
  accepted, section 8.3), ``code_challenge`` with ``code_challenge_method=S256`` (plain is refused), ``state``.
  A bad client or redirect URI is never redirected to (RFC 6749 section 4.1.2.1); other errors go back to
  the loopback listener with ``error`` and ``state``.
- The signed-in person confirms on a consent page (RFC 8252 section 8.6: no silent authorization of a
  native client), then the browser goes to the loopback listener with ``code``, ``state`` and ``iss``
  (RFC 9207).
- ``POST /oauth2/token`` with ``grant_type=authorization_code``: the code works once (a replay revokes the
  sign-in it produced, section 4.1.2), within ``oauth.cli.authorization_code_ttl_seconds``, with the same
  ``redirect_uri`` and a ``code_verifier`` whose S256 hash is the challenge (RFC 7636 section 4.6).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from broker.context import Context
from broker.errors import (
    AuthorizationDeclined,
    BrokerError,
    InvalidGrant,
    InvalidRequest,
    UnsupportedResponseType,
)
from broker.identity import Identity
from broker.oauth.clients import AuthenticatedClient
from broker.oauth.grants import Params
from broker.oauth.refresh import CHANNEL, CLI_CLIENT_ID, CliStep, iso
from broker.signin.sessions import CurrentSession
from broker.store import queries

GRANT_TYPE = "authorization_code"
AUTHORIZE_PATH = "/oauth2/authorize"
# RFC 7636 section 4.1/4.2: a verifier is 43-128 unreserved characters; an S256 challenge is 43 base64url.
_VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
_CHALLENGE = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_REDIRECT_URI_CHARS = 512
MAX_STATE_CHARS = 512
AUTHORIZE_PARAMS = ("response_type", "client_id", "redirect_uri", "code_challenge", "code_challenge_method", "state")


def is_loopback_redirect(value: str) -> bool:
    """RFC 8252 section 7.3: ``http`` to the IPv4 or IPv6 loopback literal with an explicit port; no user
    info, no fragment, nothing else in the authority (``127.0.0.1:1@evil.example`` is not loopback)."""
    if len(value) > MAX_REDIRECT_URI_CHARS or not value.isprintable() or " " in value or "\\" in value:
        return False
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "http" or parts.fragment or port is None or not 0 < port < 65536:
        return False
    return parts.netloc in (f"127.0.0.1:{port}", f"[::1]:{port}")


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _with_query(uri: str, values: dict[str, str]) -> str:
    return uri + ("&" if urlsplit(uri).query else "?") + urlencode(values)


class ErrorRedirect(Exception):
    """An authorization error reported back to the (valid, loopback) redirect URI; already audited."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.location = location


@dataclass(frozen=True)
class AuthorizeRequest:
    redirect_uri: str
    code_challenge: str
    state: str | None

    def hidden_fields(self) -> dict[str, str]:
        """The parameters the consent form posts back (re-validated on the POST)."""
        fields = {
            "response_type": "code",
            "client_id": CLI_CLIENT_ID,
            "redirect_uri": self.redirect_uri,
            "code_challenge": self.code_challenge,
            "code_challenge_method": "S256",
        }
        if self.state is not None:
            fields["state"] = self.state
        return fields

    @property
    def listener(self) -> str:
        return urlsplit(self.redirect_uri).netloc


class AuthorizationFlow(CliStep):
    """The authorization endpoint's checks, consent outcome, and code issuance."""

    def _deny(self, error: BrokerError, ctx: Context, identity: Identity | None, detail: dict[str, Any]) -> BrokerError:
        return self.audit.deny(
            self.db, error, event="cli_authorize", identity=identity, channel=CHANNEL, ctx=ctx, detail=detail
        )

    def _error_redirect(self, request: AuthorizeRequest, error: BrokerError) -> ErrorRedirect:
        values = {"error": error.code, "error_description": error.message, "iss": self.issuer}
        if request.state is not None:
            values["state"] = request.state
        return ErrorRedirect(_with_query(request.redirect_uri, values))

    def check(self, items: list[tuple[str, str]], ctx: Context, identity: Identity | None = None) -> AuthorizeRequest:
        """Validate an authorization request; raise an audited BrokerError (shown, not redirected) or an
        audited :class:`ErrorRedirect`."""
        detail: dict[str, Any] = {}
        names = [name for name, _ in items]
        params = {name: value for name, value in items if name in AUTHORIZE_PARAMS}
        detail["redirect_uri"] = params.get("redirect_uri", "")[:MAX_REDIRECT_URI_CHARS]
        try:
            if len(names) != len(set(names)) or any(len(value) > 2048 for _, value in items):
                # RFC 6749 section 3.1: parameters MUST NOT be included more than once.
                raise InvalidRequest("The sign-in request is malformed.", reason="authorize.params_invalid")
            if params.get("client_id") != CLI_CLIENT_ID:
                raise InvalidRequest(
                    "Unknown client: expected client_id broker-cli.", reason="authorize.client_unknown"
                )
            if not is_loopback_redirect(params.get("redirect_uri", "")):
                raise InvalidRequest(
                    "redirect_uri must be http://127.0.0.1:<port>/... or http://[::1]:<port>/... (RFC 8252).",
                    reason="authorize.redirect_uri_not_loopback",
                )
        except BrokerError as exc:
            raise self._deny(exc, ctx, identity, detail) from None
        state = params.get("state")
        request = AuthorizeRequest(params["redirect_uri"], params.get("code_challenge", ""), state)
        error: BrokerError | None = None
        if params.get("response_type") != "code":
            error = UnsupportedResponseType(reason="authorize.response_type")
        elif params.get("code_challenge_method") != "S256" or not _CHALLENGE.match(request.code_challenge):
            error = InvalidRequest(
                "PKCE is required: code_challenge with code_challenge_method=S256.", reason="authorize.pkce_missing"
            )
        elif state is not None and len(state) > MAX_STATE_CHARS:
            error = InvalidRequest("state is too long.", reason="authorize.state_too_long")
        if error is not None:
            self._deny(error, ctx, identity, detail)
            raise self._error_redirect(request, error)
        return request

    def approve(self, request: AuthorizeRequest, current: CurrentSession, ctx: Context) -> str:
        """Issue a one-time code bound to the challenge, the redirect URI and this person's sign-in."""
        now = self.clock()
        code = secrets.token_urlsafe(32)
        with self.db.transaction() as session:
            queries.add_authorization_code(
                session,
                code_hmac=self.keys.mac("authorization-code", code),
                client_id=CLI_CLIENT_ID,
                redirect_uri=request.redirect_uri,
                code_challenge=request.code_challenge,
                identity=current.identity.to_json(),
                session_expires_at=current.expires_at,
                created_at=now,
                expires_at=now + timedelta(seconds=self.config.authorization_code_ttl_seconds),
            )
            self.audit.append(
                session,
                event="cli_authorize",
                outcome="ok",
                reason="code_issued",
                identity=current.identity,
                channel=CHANNEL,
                ctx=ctx,
                detail={"redirect_uri": request.redirect_uri, "mfa": current.identity.mfa.level.label},
            )
        values = {"code": code, "iss": self.issuer}
        if request.state is not None:
            values["state"] = request.state
        return _with_query(request.redirect_uri, values)

    def decline(self, request: AuthorizeRequest, current: CurrentSession, ctx: Context) -> str:
        error = AuthorizationDeclined("You declined the sign-in in the browser.", reason="authorize.denied_by_user")
        self._deny(error, ctx, current.identity, {"redirect_uri": request.redirect_uri})
        return self._error_redirect(request, error).location


class AuthorizationCodeGrant(CliStep):
    """``grant_type=authorization_code`` with PKCE, for the public client ``broker-cli``."""

    grant_type = GRANT_TYPE
    public_client_id = CLI_CLIENT_ID

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        identity: Identity | None = None
        detail: dict[str, Any] = {"grant_type": GRANT_TYPE}
        try:
            code, redirect_uri, verifier = (params.get(n) for n in ("code", "redirect_uri", "code_verifier"))
            if code is None or redirect_uri is None:
                raise InvalidRequest("code and redirect_uri are required.", reason="code_params_missing")
            if verifier is None or not _VERIFIER.match(verifier):
                # RFC 7636 section 4.5: the verifier is required when the code was bound to a challenge (always).
                raise InvalidRequest("A PKCE code_verifier (43-128 characters) is required.", reason="pkce_verifier")
            if len(code) > 256:
                raise InvalidGrant("This code is not valid.", reason="code_unknown")
            now = self.clock()
            key = self.keys.mac("authorization-code", code)
            # The code is burnt first, in its own transaction: a wrong verifier or URI cannot be retried.
            with self.db.transaction() as session:
                row = queries.get_authorization_code(session, code_hmac=key)
                consumed = row is not None and queries.consume_authorization_code(session, code_hmac=key, now=now)
            if row is None:
                raise InvalidGrant("This code is not valid.", reason="code_unknown")
            identity = Identity.from_json(row.identity)
            if not consumed:
                detail["family_revoked"] = self.sessions.revoke_family(row.family_id, "authorization_code_replay")
                raise InvalidGrant("This code was already used.", reason="code_replay")
            if row.expires_at <= now:
                raise InvalidGrant("This code has expired. Run `broker login` again.", reason="code_expired")
            if redirect_uri != row.redirect_uri:
                raise InvalidGrant("redirect_uri does not match the authorization request.", reason="redirect_mismatch")
            if not hmac.compare_digest(s256(verifier), row.code_challenge):
                raise InvalidGrant("The PKCE code_verifier does not match the challenge.", reason="pkce_mismatch")
            with self.db.transaction() as session:
                started = self.sessions.start(
                    session,
                    identity=identity,
                    session_expires_at=row.session_expires_at,
                    grant_type=GRANT_TYPE,
                    ctx=ctx,
                )
                queries.link_authorization_code(session, code_hmac=key, family_id=started.family_id)
                self.audit.append(
                    session,
                    event="cli_login",
                    outcome="ok",
                    reason="authorization_code",
                    identity=identity,
                    channel=CHANNEL,
                    ctx=ctx,
                    detail={**detail, "family": started.family_id, "expires_at": iso(started.expires_at)},
                )
        except BrokerError as exc:
            raise self.audit.deny(
                self.db, exc, event="cli_login", identity=identity, channel=CHANNEL, ctx=ctx, detail=detail
            ) from None
        return self.sessions.token_response(
            family_id=started.family_id,
            identity=identity,
            expires_at=started.expires_at,
            refresh_token=started.refresh_token,
        )
