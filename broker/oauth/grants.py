"""The token endpoint (RFC 6749 section 3.2) and its grant registry.

Each grant type is a module with one class satisfying :class:`Grant` (``token_exchange`` today; device code
and refresh later). The endpoint parses parameters once, authenticates the client, checks the client may use
the grant, and hands over; the grant verifies, decides, issues and audits.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any, Literal, Protocol
from urllib.parse import unquote_plus

from broker.audit import AuditTrail
from broker.context import Clock, Context, utcnow
from broker.errors import (
    AuthorizationPending,
    BrokerError,
    InvalidClient,
    InvalidRequest,
    ReplayDetected,
    SlowDown,
    UnauthorizedClient,
    UnsupportedGrantType,
)
from broker.keys import Keys
from broker.oauth.clients import AuthenticatedClient, ClientAuthenticator
from broker.store import queries
from broker.store.db import Database

# RFC 8693 section 2.1: "audience" and "resource" may be given several times; nothing else may repeat.
REPEATABLE = frozenset({"audience", "resource"})
MAX_PARAMETERS = 64


class Params:
    """Token request parameters. Empty values count as absent (RFC 6749 section 3.1)."""

    def __init__(self, items: Sequence[tuple[str, str]]) -> None:
        if len(items) > MAX_PARAMETERS:
            raise InvalidRequest("Too many parameters.", reason="request_too_many_parameters")
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            if value == "":
                continue
            values = self._values.setdefault(name, [])
            if values and name not in REPEATABLE:
                # RFC 6749 section 3.2: request parameters MUST NOT be included more than once.
                raise InvalidRequest(f"The parameter {name[:40]!r} was given more than once.", reason="repeated_param")
            values.append(value)

    def get(self, name: str) -> str | None:
        values = self._values.get(name)
        return values[0] if values else None

    def all(self, name: str) -> tuple[str, ...]:
        return tuple(self._values.get(name, ()))

    def first_values(self) -> Mapping[str, str]:
        return {name: values[0] for name, values in self._values.items()}


class Grant(Protocol):
    """One grant type of the token endpoint."""

    grant_type: str

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        """Verify, decide, issue and audit; return the JSON token response or raise a BrokerError."""
        ...


Per = Literal["ip", "principal"]


class Limits(Protocol):
    """The abuse limits the token endpoint applies (``broker.ratelimit.RateLimiter``)."""

    def check(self, name: str, *, per: Per, key: str, ctx: Context | None = None) -> None: ...

    def spend(self, name: str, *, per: Per, key: str) -> None: ...

    def hit(
        self,
        name: str,
        *,
        per: Per,
        key: str,
        ctx: Context | None = None,
        principal: str | None = None,
    ) -> None: ...


# Answers that are part of a normal device-code poll (RFC 8628 section 3.5), not failed attempts.
_NOT_FAILURES = (AuthorizationPending, SlowDown)


def claimed_client_id(items: Sequence[tuple[str, str]], authorization: str | None) -> str | None:
    """The client id a token request claims (form ``client_id`` or HTTP Basic user), before it is verified."""
    for name, value in items:
        if name == "client_id" and value:
            return value[:256]
    if authorization and authorization[:6].lower() == "basic ":
        try:
            user = base64.b64decode(authorization[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            return None
        return unquote_plus(user)[:256] or None
    return None


class TokenEndpoint:
    """``POST /oauth2/token``: parameter parsing, client authentication, dispatch to the grant."""

    def __init__(
        self,
        *,
        db: Database,
        audit: AuditTrail,
        keys: Keys,
        clients: ClientAuthenticator,
        grants: Sequence[Grant],
        clock: Clock = utcnow,
        limits: Limits | None = None,
    ) -> None:
        self.db = db
        self.audit = audit
        self.keys = keys
        self.clients = clients
        self.grants = {g.grant_type: g for g in grants}
        self.clock = clock
        self.limits = limits
        # Everyone's CLI shares its public client id: a failure budget per that id would let anyone lock
        # every CLI user out, so public clients' failures count per address only.
        self._public_ids = {getattr(g, "public_client_id", None) for g in grants} - {None}

    @property
    def grant_types(self) -> list[str]:
        return sorted(self.grants)

    def token(self, items: Sequence[tuple[str, str]], *, authorization: str | None, ctx: Context) -> dict[str, Any]:
        """Answer one token request. Failed requests spend a tight budget of their own (``token_failure``, per
        address and per claimed confidential client id); once it is used up, requests are refused with 429
        before any secret or token is checked."""
        if self.limits is None:
            return self._token(items, authorization=authorization, ctx=ctx)
        budgets: list[tuple[Per, str]] = [("ip", ctx.client_ip or "unknown")]
        client_id = claimed_client_id(items, authorization)
        if client_id is not None and client_id not in self._public_ids:
            budgets.append(("principal", client_id))
        for per, key in budgets:
            self.limits.check("token_failure", per=per, key=key, ctx=ctx)
        try:
            return self._token(items, authorization=authorization, ctx=ctx)
        except BrokerError as exc:
            if exc.status in (400, 401) and not isinstance(exc, _NOT_FAILURES):
                for per, key in budgets:
                    self.limits.spend("token_failure", per=per, key=key)
            raise

    def _token(self, items: Sequence[tuple[str, str]], *, authorization: str | None, ctx: Context) -> dict[str, Any]:
        grant_type: str | None = None
        client_id: str | None = None
        try:
            params = Params(items)
            grant_type = params.get("grant_type")
            client_id = params.get("client_id")
            if grant_type is None:
                raise InvalidRequest("grant_type is required.", reason="grant_type_missing")
            grant = self.grants.get(grant_type)
            if grant is None:
                raise UnsupportedGrantType(reason="grant_type_unsupported")
            public_client_id: str | None = getattr(grant, "public_client_id", None)
            client: AuthenticatedClient | None = None
            if public_client_id is not None:
                # RFC 8252 section 8.4: a native app is a public client, known by its client_id alone; PKCE or
                # the device code binds the request to it. Credentials sent anyway are a misconfiguration.
                if client_id != public_client_id or authorization or "client_assertion" in params.first_values():
                    raise InvalidClient(
                        f"This grant is for the public client {public_client_id}.", reason="client.public"
                    )
            else:
                client = self.clients.authenticate(authorization=authorization, form=params.first_values())
            if client is not None:
                client_id = client.client_id
                if grant_type not in client.config.grant_types:
                    raise UnauthorizedClient(
                        "This client may not use this grant type.", reason="client.grant_type_not_allowed"
                    )
                if client.assertion_jti is not None:
                    self._consume_assertion(client)
        except BrokerError as exc:
            raise self.audit.deny(
                self.db,
                exc,
                event="oauth_token",
                principal=client_id[:256] if client_id else None,
                channel="cli" if client_id == "broker-cli" else "service",
                ctx=ctx,
                detail={"grant_type": (grant_type or "")[:100], "client_id": client_id[:256] if client_id else None},
            ) from None
        if client is not None and self.limits is not None:
            # The per-principal budget of machine traffic: a confidential client is the principal asking.
            self.limits.hit("token", per="principal", key=client.client_id, ctx=ctx, principal=client.client_id)
        return grant.handle(params, client, ctx)

    def _consume_assertion(self, client: AuthenticatedClient) -> None:
        assert client.assertion_jti is not None and client.assertion_expires_at is not None
        try:
            with self.db.transaction() as session:
                queries.consume_once(
                    session,
                    kind="client_jti",
                    key_hmac=self.keys.macs("client-assertion", f"{client.client_id}\n{client.assertion_jti}"),
                    # Remembered until the assertion could no longer be accepted anyway.
                    expires_at=client.assertion_expires_at + timedelta(seconds=120),
                )
        except ReplayDetected:
            raise InvalidClient("This client assertion was already used.", reason="client.assertion_replay") from None
