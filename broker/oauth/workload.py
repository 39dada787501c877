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

Shape, header policy, key cache, signature and registered claims are ``broker.jose``'s; this module adds
the routing, explicit typing, the issuer's tables (audiences, required claims, maximum age) and the mapping
of each check to its audit reason.

Every refusal is an :class:`~broker.errors.InvalidRequest`: RFC 8693 section 2.2.2 says a subject or actor
token that is "invalid for any reason" MUST yield ``invalid_request``. The audit reason says which check.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from broker import jose
from broker.context import Clock, utcnow
from broker.errors import InvalidRequest, ServiceUnavailable
from broker.http import HttpClient, HttpPolicy
from broker.identity import Identity
from broker.settings import WorkloadIssuerConfig

TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"  # noqa: S105
TOKEN_TYPE_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
TOKEN_TYPE_ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
TOKEN_TYPES = {TOKEN_TYPE_JWT: "jwt", TOKEN_TYPE_ACCESS_TOKEN: "access_token"}

# Attributes copied from claims into the Identity (for grant rules): bounded in number and size.
MAX_ATTRIBUTES, MAX_ATTRIBUTE_CHARS = 128, 1024
MAX_SUBJECT_CHARS = 1024
# Claims that are about the token rather than the workload: not copied into attributes.
_TOKEN_CLAIMS = frozenset({"exp", "nbf", "iat", "jti", "aud", "may_act", "act", "cnf"})
# RFC 9068 section 4: access tokens are typed at+jwt (the media type form is allowed too).
_AT_TYP = frozenset({"at+jwt", "application/at+jwt"})


def _refuse(reason: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"The token is not acceptable: {message}.", reason=f"workload.{reason}")


# jose's neutral refusal codes, as this verifier's audit reasons and messages.
_REFUSALS = {
    "oversized": ("oversized", "it is empty or larger than any trusted issuer's limit"),
    "malformed": ("malformed", "it is not a signed JWT in compact form with JSON header and payload"),
    "alg_none": ("alg_none", "it is unsigned"),
    "alg_not_allowed": ("alg_not_allowed", "its algorithm is not allowed for this issuer"),
    "crit": ("unknown_crit", "it names critical header extensions this broker does not understand"),
    "key_reference": ("key_reference_header", "it carries jku/x5u/jwk/x5c headers, which are never used"),
    "bad_kid": ("bad_kid", "its key id is malformed"),
    "unknown_kid": ("unknown_kid", "it is signed with a key its issuer does not publish"),
    "ambiguous_kid": ("unknown_kid", "it is signed with a key its issuer does not publish"),
    "key_alg_mismatch": ("key_alg_mismatch", "its algorithm does not fit the issuer's key"),
    "bad_signature": ("bad_signature", "its signature does not verify"),
}
# Claim failures (claim, problem) as reasons; a claim not named here is one of the issuer's required claims.
_CLAIM_REFUSALS = {
    ("iss", "missing"): ("issuer_mismatch", "its issuer changed between header routing and verification"),
    ("iss", "invalid"): ("issuer_mismatch", "its issuer changed between header routing and verification"),
    ("sub", "missing"): ("bad_sub", "it has no usable subject"),
    ("sub", "invalid"): ("bad_sub", "it has no usable subject"),
    ("aud", "missing"): ("wrong_audience", "it was issued for another audience"),
    ("aud", "invalid"): ("wrong_audience", "it was issued for another audience"),
    ("exp", "missing"): ("no_exp", "it has no expiry"),
    ("exp", "invalid"): ("no_exp", "it has no expiry"),
    ("exp", "expired"): ("expired", "it has expired"),
    ("nbf", "invalid"): ("not_yet_valid", "it is not valid yet"),
    ("iat", "missing"): ("bad_iat", "its issue time is missing or in the future"),
    ("iat", "invalid"): ("bad_iat", "its issue time is missing or in the future"),
    ("iat", "too_old"): ("too_old", "it was issued too long ago"),
    ("jti", "invalid"): ("bad_jti", "its jti is malformed"),
}


def _refused(refusal: jose.Refused) -> InvalidRequest:
    return _refuse(*_REFUSALS[refusal.code])


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


class WorkloadVerifier:
    """Verifies workload tokens for every configured issuer; one per process, thread-safe."""

    def __init__(
        self,
        issuers: Sequence[WorkloadIssuerConfig],
        *,
        http: HttpClient | None = None,
        clock: Clock = utcnow,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._owns_http = http is None
        # Never follow redirects, never read proxy settings from the environment for key fetches.
        self._http = http or HttpClient(HttpPolicy(max_bytes=jose.MAX_JWKS_BYTES, peer="workload_jwks"))
        self._clock = clock
        self.issuers = {i.issuer: i for i in issuers}
        self.caches = {
            i.issuer: jose.JwksCache(
                uri=i.jwks_uri,
                jwks=i.jwks,
                http=self._http,
                ttl_seconds=i.jwks_cache_seconds,
                refresh_floor_seconds=i.jwks_refresh_interval_seconds,
                # A briefly unreachable issuer: keys fetched up to one more cache period ago stay in use.
                stale_grace_seconds=2 * i.jwks_cache_seconds,
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
        try:
            header, unverified = jose.segments(token, max_bytes=self._max_bytes)
        except jose.Refused as refusal:
            raise _refused(refusal) from None
        issuer_value = unverified.get("iss")
        config = self.issuers.get(issuer_value) if isinstance(issuer_value, str) else None
        if config is None:
            raise _refuse("untrusted_issuer", "its issuer is not trusted by this broker")
        if len(token) > config.max_token_bytes:
            raise _refuse("oversized", "it is larger than its issuer's limit")
        if kind not in config.token_types:
            raise _refuse("token_type_not_allowed", f"tokens from this issuer are not accepted as {kind}")
        try:
            alg, kid = jose.check_header(header, algorithms=config.algorithms)
            _check_typ(header, kind)
            key = self.caches[config.issuer].key(kid, alg)
            claims = jose.verify_signature(token, key, alg)
        except jose.Refused as refusal:
            raise _refused(refusal) from None
        except jose.JwksUnavailable:
            raise ServiceUnavailable(
                "The workload's token issuer cannot be reached to check its keys. Try again shortly.",
                reason="workload.jwks_unavailable",
                retry_after=5,
            ) from None
        return self._check_claims(claims, config, token_type)

    def _check_claims(self, claims: dict[str, Any], config: WorkloadIssuerConfig, token_type: str) -> VerifiedWorkload:
        rules = jose.ClaimRules(
            issuer=config.issuer,
            audiences=config.audiences,
            required=("sub", "exp", "iat", *config.required_claims),
            leeway=config.clock_skew_seconds,
            max_age_seconds=config.max_token_age_seconds,
        )
        try:
            jose.check_claims(claims, rules, now=self._clock().timestamp())
        except jose.ClaimRefused as refused:
            reason, message = _CLAIM_REFUSALS.get(
                (refused.claim, refused.problem), ("missing_claims", f"it lacks required claims {[refused.claim]}")
            )
            raise _refuse(reason, message) from None
        sub = claims["sub"]
        if len(sub) > MAX_SUBJECT_CHARS:
            raise _refuse("bad_sub", "it has no usable subject")
        exp = jose.numeric_date(claims["exp"])
        if exp is None:
            raise _refuse("no_exp", "its expiry is out of range")
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


def _check_typ(header: Mapping[str, Any], kind: str) -> None:
    """Explicit typing (RFC 8725 section 3.11): access tokens are at+jwt, workload JWTs untyped or JWT."""
    typ = header.get("typ")
    if typ is not None and not isinstance(typ, str):
        raise _refuse("typ_mismatch", "its typ header is malformed")
    typ_lower = typ.lower() if typ else None
    if kind == "access_token" and typ_lower not in _AT_TYP:
        raise _refuse("typ_mismatch", "an access token must be typed at+jwt (RFC 9068)")
    if kind == "jwt" and typ_lower not in (None, "jwt"):
        raise _refuse("typ_mismatch", f"a token typed {str(typ)[:32]!r} is not a workload JWT")


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
