"""Client authentication at the token endpoint (RFC 6749 section 2.3, RFC 7523 section 2.2).

Two methods, one per registered client:

- ``client_secret_basic``: HTTP Basic with the form-urlencoded client id and secret (RFC 6749 section
  2.3.1), compared in constant time;
- ``private_key_jwt``: a JWT signed with the client's key, ``iss`` = ``sub`` = client id, ``aud`` the token
  endpoint (or the issuer), short-lived, with a single-use ``jti`` (RFC 7523 section 3; OpenID Connect Core
  section 9). The key comes from the client's registered JWKS; headers that point at keys are refused.

A request with no client authentication is a public request: the workload token alone proves who is asking,
unless ``oauth.require_client_authentication`` is set.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

from broker import jose
from broker.context import Clock, utcnow
from broker.errors import InvalidClient, InvalidRequest, ServiceUnavailable
from broker.http import HttpClient
from broker.settings import OAuthClientConfig, OAuthSettings

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A client assertion is minted for one request: one that claims to live longer than this is refused.
MAX_ASSERTION_LIFETIME_SECONDS = 300
CLOCK_SKEW_SECONDS = 60
MAX_ASSERTION_BYTES = 8192
_ASSERTION_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
# jose's neutral refusal codes as client-authentication reasons.
_REFUSALS = {
    "oversized": "assertion_oversized",
    "malformed": "assertion_malformed",
    "alg_none": "assertion_alg",
    "alg_not_allowed": "assertion_alg",
    "crit": "assertion_header",
    "key_reference": "assertion_header",
    "bad_kid": "assertion_header",
    "unknown_kid": "assertion_unknown_kid",
    "ambiguous_kid": "assertion_unknown_kid",
    "key_alg_mismatch": "assertion_alg",
    "bad_signature": "assertion_signature",
}
# Claim failures as reasons, checked in the order RFC 7523 section 3 lists them.
_CLAIM_REFUSALS = {
    "iss": "assertion_sub",
    "sub": "assertion_sub",
    "aud": "assertion_audience",
    "exp": "assertion_expired",
    "iat": "assertion_lifetime",
    "nbf": "assertion_expired",
    "jti": "assertion_jti",
}


@dataclass(frozen=True)
class AuthenticatedClient:
    """A client that proved its identity; ``assertion_jti`` must be consumed once by the caller."""

    client_id: str
    method: str
    config: OAuthClientConfig
    assertion_jti: str | None = None
    assertion_expires_at: datetime | None = None


def _fail(reason: str, message: str = "Client authentication failed.") -> InvalidClient:
    return InvalidClient(message, reason=f"client.{reason}")


class ClientAuthenticator:
    """Authenticates token-endpoint clients; thread-safe, one per process."""

    def __init__(
        self, settings: OAuthSettings, *, audiences: tuple[str, ...], http: HttpClient, clock: Clock = utcnow
    ) -> None:
        self._settings = settings
        self._audiences = audiences
        self._clock = clock
        self._jwks = {
            c.client_id: jose.JwksCache(
                uri=c.jwks_uri,
                jwks=c.jwks,
                http=http,
                ttl_seconds=300,
                refresh_floor_seconds=30,
                stale_grace_seconds=600,
                timeout_seconds=3,
            )
            for c in settings.clients
            if c.auth_method == "private_key_jwt"
        }

    def authenticate(self, *, authorization: str | None, form: Mapping[str, str]) -> AuthenticatedClient | None:
        """The authenticated client, None for a public request, or InvalidClient."""
        basic = authorization is not None and authorization[:6].lower() == "basic "
        assertion = form.get("client_assertion")
        if basic and assertion:
            # RFC 6749 section 2.3: a client MUST NOT use more than one authentication method per request.
            raise InvalidRequest("Use one client authentication method per request.", reason="client.two_methods")
        if "client_secret" in form:
            raise _fail("secret_in_body", "Send the client secret with HTTP Basic (client_secret_basic).")
        if basic:
            assert authorization is not None
            return self._basic(authorization[6:].strip(), form.get("client_id"))
        if assertion is not None or "client_assertion_type" in form:
            if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE or not assertion:
                raise _fail("assertion_type", "client_assertion_type must be " + CLIENT_ASSERTION_TYPE)
            return self._assertion(assertion, form.get("client_id"))
        if self._settings.require_client_authentication:
            raise _fail("required", "This broker requires client authentication.")
        return None

    def _client(self, client_id: str, method: str) -> OAuthClientConfig:
        client = self._settings.client(client_id)
        if client is None or client.auth_method != method:
            raise _fail("unknown_client")
        return client

    def _basic(self, credentials: str, body_client_id: str | None) -> AuthenticatedClient:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
            raw_id, raw_secret = decoded.split(":", 1)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _fail("malformed_basic") from None
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        if body_client_id is not None and body_client_id != client_id:
            raise _fail("client_id_mismatch")
        client = self._client(client_id, "client_secret_basic")
        assert client.client_secret is not None
        if not hmac.compare_digest(client.client_secret.get_secret_value().encode(), secret.encode()):
            raise _fail("bad_secret")
        return AuthenticatedClient(client_id, "client_secret_basic", client)

    def _assertion(self, assertion: str, body_client_id: str | None) -> AuthenticatedClient:
        try:
            header, unverified = jose.segments(assertion, max_bytes=MAX_ASSERTION_BYTES)
        except jose.Refused as refusal:
            raise _fail(_REFUSALS[refusal.code]) from None
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or (body_client_id is not None and body_client_id != client_id):
            raise _fail("client_id_mismatch")
        client = self._client(client_id, "private_key_jwt")
        try:
            alg, kid = jose.check_header(header, algorithms=_ASSERTION_ALGORITHMS)
            key = self._jwks[client.client_id].key(kid, alg)
            claims = jose.verify_signature(assertion, key, alg)
        except jose.Refused as refusal:
            raise _fail(_REFUSALS[refusal.code]) from None
        except jose.JwksUnavailable:
            raise ServiceUnavailable(
                "The client's key set cannot be fetched right now. Try again shortly.",
                reason="client.jwks_unavailable",
                retry_after=5,
            ) from None
        now = self._clock().timestamp()
        rules = jose.ClaimRules(
            issuer=client_id,
            subject=client_id,
            audiences=self._audiences,
            required=("exp", "jti"),
            leeway=CLOCK_SKEW_SECONDS,
        )
        try:
            jose.check_claims(claims, rules, now=now)
        except jose.ClaimRefused as refused:
            raise _fail(_CLAIM_REFUSALS.get(refused.claim, "assertion_malformed")) from None
        exp, iat = jose.numeric_date(claims["exp"]), jose.numeric_date(claims.get("iat"))
        if exp is None:
            raise _fail("assertion_expired")
        if exp - (iat if iat is not None else now) > MAX_ASSERTION_LIFETIME_SECONDS:
            raise _fail("assertion_lifetime")
        jti = claims["jti"]
        if len(jti) > 256:
            raise _fail("assertion_jti")
        return AuthenticatedClient(
            client_id,
            "private_key_jwt",
            client,
            assertion_jti=jti,
            assertion_expires_at=datetime.fromtimestamp(exp, UTC),
        )
