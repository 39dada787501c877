"""Verifying workload JWTs from trusted issuers (RFC 7519 section 7.2, RFC 8725, RFC 9068 section 4).

A workload proves who it is with the token its platform already gives it: a Kubernetes service-account
token, a CI job's OIDC token, a SPIFFE JWT-SVID, an access token from the company IdP's client-credentials
grant. Only :class:`WorkloadVerifier` builds a :class:`VerifiedWorkload`, after every check below passed:

1. size, before any decoding (an oversized token costs nothing to refuse);
2. shape: JWS compact serialization with exactly three parts (no JWE, no JSON serialization);
3. the issuer, matched byte for byte against the configured ones (routing only; nothing else is trusted
   before the signature is checked);
4. the header: ``alg`` from the issuer's allow-list (never ``none``, never HS*), no ``crit`` (RFC 7515
   section 4.1.11: unknown critical extensions must be refused), no ``jku``/``x5u``/``jwk``/``x5c`` (the
   key comes from the issuer's configured JWKS, never from the token), a sane ``kid``, explicit typing
   (RFC 8725 section 3.11);
5. the signature, with the issuer's key for that ``kid``; an unknown ``kid`` triggers one rate-limited JWKS
   refetch (the issuer may have rotated);
6. the claims: ``iss``, ``sub``, ``aud`` (one of the accepted audiences), ``exp``, ``nbf``, ``iat`` with
   bounded skew and a maximum age, the issuer's required claims, and ``jti`` when it must be single-use (the
   use case consumes it in the database).

Every refusal is an :class:`~broker.errors.InvalidRequest`: RFC 8693 section 2.2.2 says a subject or actor
token that is "invalid for any reason" MUST yield ``invalid_request``. The audit reason says which check.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from broker.audit import Clock, utcnow
from broker.errors import InvalidRequest, ServiceUnavailable
from broker.identity import Identity
from broker.settings import WorkloadIssuerConfig

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
TOKEN_TYPES = {TOKEN_TYPE_JWT: "jwt", TOKEN_TYPE_ACCESS_TOKEN: "access_token"}

# Headers that name a key or a place to fetch one. The key must come from configuration, never the token.
KEY_REFERENCE_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
# A JWKS document larger than this is refused (real ones are a few kB; GitHub's is under 4 kB).
MAX_JWKS_BYTES = 256 * 1024
MAX_KID_LENGTH = 256
_KID = re.compile(r"[\x21-\x7e]+")
# Attributes copied from claims into the Identity (for grant rules): bounded in number and size.
MAX_ATTRIBUTES, MAX_ATTRIBUTE_CHARS = 128, 1024
MAX_SUBJECT_CHARS = 1024
# Claims that are about the token rather than the workload: not copied into attributes.
_TOKEN_CLAIMS = frozenset({"exp", "nbf", "iat", "jti", "aud", "may_act", "act", "cnf"})
# RFC 9068 section 4: access tokens are typed at+jwt (the media type form is allowed too).
_AT_TYP = frozenset({"at+jwt", "application/at+jwt"})


def _refuse(reason: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"The token is not acceptable: {message}.", reason=f"workload.{reason}")


def b64json(part: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        raise _refuse("malformed", f"its {what} is not base64url JSON") from None
    if not isinstance(value, dict):
        raise _refuse("malformed", f"its {what} is not a JSON object")
    return value


@dataclass(frozen=True)
class VerifiedWorkload:
    """A workload token that passed every check. Only :class:`WorkloadVerifier` makes one."""

    identity: Identity
    issuer_name: str
    token_type: str
    claims: Mapping[str, Any] = field(repr=False)
    jti: str | None
    expires_at: datetime
    single_use: bool

    @property
    def principal(self) -> str:
        """The subject as the broker names it in tokens it issues: ``<issuer name>:<sub>``."""
        return f"{self.issuer_name}:{self.identity.subject}"

    @property
    def may_act(self) -> Mapping[str, Any] | None:
        value = self.claims.get("may_act")
        return value if isinstance(value, Mapping) else None

    @property
    def act(self) -> Mapping[str, Any] | None:
        value = self.claims.get("act")
        return value if isinstance(value, Mapping) else None


PublicKey = RSAKey | ECKey | OKPKey


class JwksCache:
    """One issuer's keys: fetched with timeouts, cached, refetched at most once per interval for an unknown kid.

    Thread-safe; the lock is held only while fetching, so a slow issuer delays only its own tokens.
    """

    def __init__(
        self,
        *,
        jwks_uri: str | None,
        jwks: Mapping[str, Any] | None,
        http: httpx.Client,
        cache_seconds: float,
        refresh_interval_seconds: float,
        timeout_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jwks_uri = jwks_uri
        self._http = http
        self._cache_seconds = cache_seconds
        self._refresh_interval = refresh_interval_seconds
        self._timeout = timeout_seconds
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys: dict[str, PublicKey] = {}
        self._unnamed: list[PublicKey] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0
        if jwks is not None:
            self._install(jwks)
            self._fetched_at = float("inf")

    def _install(self, document: Mapping[str, Any]) -> None:
        keys: dict[str, PublicKey] = {}
        unnamed: list[PublicKey] = []
        entries = document.get("keys")
        if not isinstance(entries, list):
            raise ValueError("not a JWKS")
        for entry in entries:
            # Only public signature keys; a symmetric or private key in a JWKS is never used.
            if not isinstance(entry, dict) or entry.get("kty") not in {"RSA", "EC", "OKP"} or "d" in entry:
                continue
            if entry.get("use", "sig") != "sig":
                continue
            try:
                key = KeySet.import_key_set({"keys": [entry]}).keys[0]
            except (JoseError, ValueError, TypeError, KeyError):
                continue
            assert isinstance(key, RSAKey | ECKey | OKPKey)
            kid = entry.get("kid")
            if isinstance(kid, str):
                keys[kid] = key
            else:
                unnamed.append(key)
        self._keys, self._unnamed = keys, unnamed

    def _fetch(self) -> None:
        assert self.jwks_uri is not None
        self._attempted_at = self._monotonic()
        self.fetches += 1
        try:
            with self._http.stream(
                "GET",
                self.jwks_uri,
                timeout=self._timeout,
                follow_redirects=False,
                headers={"Accept": "application/json"},
            ) as response:
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                body = b""
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > MAX_JWKS_BYTES:
                        raise ValueError("JWKS too large")
            self._install(json.loads(body))
            self._fetched_at = self._monotonic()
        except (httpx.HTTPError, ValueError) as exc:
            if self._fetched_at is None or self._monotonic() - self._fetched_at > 2 * self._cache_seconds:
                raise ServiceUnavailable(
                    "The workload's token issuer cannot be reached to check its keys. Try again shortly.",
                    reason="workload.jwks_unavailable",
                    retry_after=5,
                ) from exc
            # A briefly unreachable issuer: keep using keys fetched moments ago.

    def _lookup(self, kid: str | None, alg: str) -> PublicKey | None:
        if kid is not None:
            return self._keys.get(kid)
        # No kid: acceptable only when exactly one key could have signed (RFC 7515 section 4.1.4).
        candidates = [k for k in [*self._keys.values(), *self._unnamed] if key_fits(k, alg)]
        return candidates[0] if len(candidates) == 1 else None

    def key(self, kid: str | None, alg: str) -> PublicKey:
        now = self._monotonic()
        stale = self._fetched_at is None or now - self._fetched_at > self._cache_seconds
        if self.jwks_uri is not None and stale:
            with self._lock:
                if self._fetched_at is None or self._monotonic() - self._fetched_at > self._cache_seconds:
                    self._fetch()
        key = self._lookup(kid, alg)
        if key is None and self.jwks_uri is not None:
            with self._lock:
                key = self._lookup(kid, alg)
                recently = self._attempted_at is not None and now - self._attempted_at < self._refresh_interval
                if key is None and not recently:
                    self._fetch()
                    key = self._lookup(kid, alg)
        if key is None:
            raise _refuse("unknown_kid", "it is signed with a key its issuer does not publish")
        return key


def key_fits(key: PublicKey, alg: str) -> bool:
    """Whether a key's type can produce ``alg`` (and its own ``alg`` parameter, if any, agrees)."""
    declared = key.alg
    if declared is not None and declared != alg:
        return False
    if alg.startswith(("RS", "PS")):
        return isinstance(key, RSAKey)
    if alg.startswith("ES"):
        return isinstance(key, ECKey)
    return isinstance(key, OKPKey)


class WorkloadVerifier:
    """Verifies workload tokens for every configured issuer; one per process, thread-safe."""

    def __init__(
        self,
        issuers: Sequence[WorkloadIssuerConfig],
        *,
        http: httpx.Client | None = None,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owns_http = http is None
        # Never follow redirects, never read proxy settings from the environment for key fetches.
        self._http = http or httpx.Client(follow_redirects=False, trust_env=False)
        self._clock = clock
        self.issuers = {i.issuer: i for i in issuers}
        self.caches = {
            i.issuer: JwksCache(
                jwks_uri=i.jwks_uri,
                jwks=i.jwks,
                http=self._http,
                cache_seconds=i.jwks_cache_seconds,
                refresh_interval_seconds=i.jwks_refresh_interval_seconds,
                timeout_seconds=i.http_timeout_seconds,
                monotonic=monotonic,
            )
            for i in issuers
        }
        self._max_bytes = max((i.max_token_bytes for i in issuers), default=0)

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def verify(self, token: str, *, token_type: str) -> VerifiedWorkload:
        """Verify ``token`` presented as ``token_type`` (an RFC 8693 token type URI)."""
        kind = TOKEN_TYPES.get(token_type)
        if kind is None:
            raise _refuse("unsupported_token_type", f"token type {token_type[:100]!r} is not accepted here")
        if not token or len(token) > self._max_bytes:
            raise _refuse("oversized", "it is empty or larger than any trusted issuer's limit")
        parts = token.split(".")
        if len(parts) != 3:
            raise _refuse("malformed", "it is not a signed JWT in compact form")
        header = b64json(parts[0], "header")
        unverified = b64json(parts[1], "payload")
        issuer_value = unverified.get("iss")
        config = self.issuers.get(issuer_value) if isinstance(issuer_value, str) else None
        if config is None:
            raise _refuse("untrusted_issuer", "its issuer is not trusted by this broker")
        if len(token) > config.max_token_bytes:
            raise _refuse("oversized", "it is larger than its issuer's limit")
        if kind not in config.token_types:
            raise _refuse("token_type_not_allowed", f"tokens from this issuer are not accepted as {kind}")
        alg, kid = self._check_header(header, config, kind)
        key = self.caches[config.issuer].key(kid, alg)
        if not key_fits(key, alg):
            raise _refuse("key_alg_mismatch", "its algorithm does not fit the issuer's key")
        try:
            verified = jws.deserialize_compact(token, key, algorithms=[alg])
        except JoseError:
            raise _refuse("bad_signature", "its signature does not verify") from None
        try:
            claims = json.loads(verified.payload)
        except ValueError:
            raise _refuse("malformed", "its payload is not JSON") from None
        if not isinstance(claims, dict):
            raise _refuse("malformed", "its payload is not a JSON object")
        return self._check_claims(claims, config, token_type)

    def _check_header(
        self, header: Mapping[str, Any], config: WorkloadIssuerConfig, kind: str
    ) -> tuple[str, str | None]:
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise _refuse("alg_none", "it is unsigned")
        if alg not in config.algorithms:
            raise _refuse("alg_not_allowed", f"algorithm {alg[:16]!r} is not allowed for this issuer")
        if "crit" in header:
            raise _refuse("unknown_crit", "it names critical header extensions this broker does not understand")
        references = KEY_REFERENCE_HEADERS.intersection(header)
        if references:
            raise _refuse("key_reference_header", f"it carries {sorted(references)} headers, which are never used")
        kid = header.get("kid")
        if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH or not _KID.fullmatch(kid)):
            raise _refuse("bad_kid", "its key id is malformed")
        typ = header.get("typ")
        if typ is not None and not isinstance(typ, str):
            raise _refuse("typ_mismatch", "its typ header is malformed")
        typ_lower = typ.lower() if typ else None
        if kind == "access_token" and typ_lower not in _AT_TYP:
            raise _refuse("typ_mismatch", "an access token must be typed at+jwt (RFC 9068)")
        if kind == "jwt" and typ_lower not in (None, "jwt"):
            raise _refuse("typ_mismatch", f"a token typed {str(typ)[:32]!r} is not a workload JWT")
        return alg, kid

    def _check_claims(self, claims: dict[str, Any], config: WorkloadIssuerConfig, token_type: str) -> VerifiedWorkload:
        now = self._clock().timestamp()
        skew = config.clock_skew_seconds
        if claims.get("iss") != config.issuer:
            raise _refuse("issuer_mismatch", "its issuer changed between header routing and verification")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > MAX_SUBJECT_CHARS:
            raise _refuse("bad_sub", "it has no usable subject")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(isinstance(a, str) and a in config.audiences for a in audiences):
            raise _refuse("wrong_audience", "it was issued for another audience")
        exp, iat, nbf = (
            numeric_date(claims.get("exp")),
            numeric_date(claims.get("iat")),
            numeric_date(claims.get("nbf")),
        )
        if exp is None:
            raise _refuse("no_exp", "it has no expiry")
        if now >= exp + skew:
            raise _refuse("expired", "it has expired")
        if "nbf" in claims and (nbf is None or nbf > now + skew):
            raise _refuse("not_yet_valid", "it is not valid yet")
        if iat is None or iat > now + skew:
            raise _refuse("bad_iat", "its issue time is missing or in the future")
        if now - iat > config.max_token_age_seconds + skew:
            raise _refuse("too_old", "it was issued too long ago")
        missing = [c for c in config.required_claims if claims.get(c) in (None, "", [])]
        if missing:
            raise _refuse("missing_claims", f"it lacks required claims {missing}")
        jti = claims.get("jti")
        if jti is not None and (not isinstance(jti, str) or not jti or len(jti) > 256):
            raise _refuse("bad_jti", "its jti is malformed")
        if config.single_use_jti and jti is None:
            raise _refuse("no_jti", "its issuer requires a jti and it has none")
        for name in ("may_act", "act"):
            if name in claims and not isinstance(claims[name], dict):
                raise _refuse("malformed", f"its {name} claim is not an object")
        attributes = _flatten(claims)
        username = claims.get(config.username_claim) if config.username_claim else None
        groups = claims.get(config.groups_claim) if config.groups_claim else None
        identity = Identity(
            subject=sub,
            issuer=config.issuer,
            store=config.name,
            username=username if isinstance(username, str) and username else sub,
            groups=frozenset(g for g in groups if isinstance(g, str)) if isinstance(groups, list) else frozenset(),
            attributes=attributes,
        )
        return VerifiedWorkload(
            identity=identity,
            issuer_name=config.name,
            token_type=token_type,
            claims=claims,
            jti=jti,
            expires_at=datetime.fromtimestamp(exp, UTC),
            single_use=config.single_use_jti,
        )


def numeric_date(value: Any) -> float | None:
    """A NumericDate (RFC 7519 section 2), or None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e11:
        return float(value)
    return None


def _flatten(claims: Mapping[str, Any]) -> dict[str, str]:
    """String (and integer) claims, nested objects joined with dots: ``kubernetes.io.namespace``."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= MAX_ATTRIBUTES:
            return
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        elif isinstance(value, str) and len(value) <= MAX_ATTRIBUTE_CHARS:
            out[prefix] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            out[prefix] = str(value)

    for name, value in claims.items():
        if name not in _TOKEN_CLAIMS:
            walk(name, value)
    return out
