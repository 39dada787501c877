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
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import unquote_plus

import httpx
from joserfc import jws
from joserfc.errors import JoseError

from broker.audit import Clock, utcnow
from broker.errors import InvalidClient, InvalidRequest
from broker.oauth.workload import KEY_REFERENCE_HEADERS, JwksCache, b64json, key_fits, numeric_date
from broker.settings import OAuthClientConfig, OAuthSettings

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A client assertion is minted for one request: one that claims to live longer than this is refused.
MAX_ASSERTION_LIFETIME_SECONDS = 300
CLOCK_SKEW_SECONDS = 60
MAX_ASSERTION_BYTES = 8192
_ASSERTION_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")


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
        self, settings: OAuthSettings, *, audiences: tuple[str, ...], http: httpx.Client, clock: Clock = utcnow
    ) -> None:
        self._settings = settings
        self._audiences = audiences
        self._clock = clock
        self._jwks = {
            c.client_id: JwksCache(
                jwks_uri=c.jwks_uri,
                jwks=c.jwks,
                http=http,
                cache_seconds=300,
                refresh_interval_seconds=30,
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
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise _fail("assertion_oversized")
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _fail("assertion_malformed")
        try:
            header = b64json(parts[0], "header")
            unverified = b64json(parts[1], "payload")
        except InvalidRequest:
            raise _fail("assertion_malformed") from None
        client_id = unverified.get("iss")
        if not isinstance(client_id, str) or (body_client_id is not None and body_client_id != client_id):
            raise _fail("client_id_mismatch")
        client = self._client(client_id, "private_key_jwt")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in _ASSERTION_ALGORITHMS:
            raise _fail("assertion_alg")
        if "crit" in header or KEY_REFERENCE_HEADERS.intersection(header):
            raise _fail("assertion_header")
        kid = header.get("kid")
        try:
            key = self._jwks[client.client_id].key(kid if isinstance(kid, str) else None, alg)
        except InvalidRequest:
            raise _fail("assertion_unknown_kid") from None
        if not key_fits(key, alg):
            raise _fail("assertion_alg")
        try:
            claims = json.loads(jws.deserialize_compact(assertion, key, algorithms=[alg]).payload)
        except (JoseError, ValueError):
            raise _fail("assertion_signature") from None
        now = self._clock().timestamp()
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        exp, iat = numeric_date(claims.get("exp")), numeric_date(claims.get("iat"))
        jti = claims.get("jti")
        checks = {
            "assertion_sub": claims.get("iss") == client_id and claims.get("sub") == client_id,
            "assertion_audience": any(a in self._audiences for a in audiences),
            "assertion_expired": exp is not None and now < exp + CLOCK_SKEW_SECONDS,
            "assertion_lifetime": exp is not None
            and exp - (iat if iat is not None else now) <= MAX_ASSERTION_LIFETIME_SECONDS,
            "assertion_jti": isinstance(jti, str) and 0 < len(jti) <= 256,
        }
        failed = next((name for name, ok in checks.items() if not ok), None)
        if failed:
            raise _fail(failed)
        assert exp is not None and isinstance(jti, str)
        return AuthenticatedClient(
            client_id,
            "private_key_jwt",
            client,
            assertion_jti=jti,
            assertion_expires_at=datetime.fromtimestamp(exp, UTC),
        )
