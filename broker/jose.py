"""JOSE for the whole broker: the one module that verifies JWTs it did not sign (``broker/client`` is separate).

Workload tokens (``oauth.workload``), client assertions (``oauth.clients``) and ID tokens
(``connectors.oidc``) pass the same four steps here, in this order; each caller maps the neutral refusal
codes below to its own audit reasons, so the policy is one and the reasons stay the caller's:

1. shape (:func:`segments`): JWS compact serialization, three parts, JSON objects, within a size limit;
2. header (:func:`check_header`): ``alg`` from the caller's allow-list (never ``none``; the lists hold only
   asymmetric algorithms), no ``crit`` (RFC 7515 section 4.1.11: no extension is understood), no
   ``jku``/``x5u``/``jwk``/``x5c`` (the key comes from configuration, never from the token; RFC 8725
   section 3.10), a printable ASCII ``kid`` of bounded length;
3. key (:class:`JwksCache`): from a configured or fetched JWKS, cached for a TTL, refetched for an unknown
   ``kid`` at most once per refresh floor (forged kids cannot make the broker hammer an issuer), through the
   HTTP owner (timeouts, size cap, TLS);
4. signature and claims (:func:`verify_signature`, :func:`check_claims`): joserfc's JWS verifier, then
   joserfc's ``JWTClaimsRegistry`` for ``iss``/``sub``/``aud``/``exp``/``nbf``/``iat`` with leeway and the
   caller's table of required claims, plus a maximum age.

:func:`sign` and :func:`private_key` are the signing side for the keys the broker holds; :func:`generate_key`,
:func:`public_jwk`, :func:`private_jwk` and :func:`key_set` serve the broker's own rotating signing keys, whose
tokens pass the same :func:`verify` as everyone else's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import re
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import ClaimError, ExpiredTokenError, JoseError, MissingClaimError
from joserfc.jwk import ECKey, KeySet, OKPKey, RSAKey

from broker.http import HttpClient, UpstreamTooLarge, UpstreamUnavailable

PublicKey = RSAKey | ECKey | OKPKey
PrivateKey = ECKey | RSAKey | OKPKey
# Headers that name a key or a place to fetch one. The key must come from configuration, never the token.
KEY_REFERENCE_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})
MAX_KID_LENGTH = 256
_KID = re.compile(r"[\x21-\x7e]+")
# A JWKS document larger than this is refused (real ones are a few kB; GitHub's is under 4 kB).
MAX_JWKS_BYTES = 256 * 1024
# The longest compact JWS joserfc's verifier accepts at all (header, payload and signature caps together).
MAX_COMPACT_BYTES = (
    jws.JWSRegistry.max_header_length + jws.JWSRegistry.max_payload_length + jws.JWSRegistry.max_signature_length
)


class Refused(Exception):
    """A token failed a check. ``code`` is neutral; the caller maps it to its own refusal reason.

    Codes: ``oversized``, ``malformed``, ``alg_none``, ``alg_not_allowed``, ``crit``, ``key_reference``,
    ``bad_kid``, ``unknown_kid``, ``ambiguous_kid``, ``key_alg_mismatch``, ``bad_signature``.
    """

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class ClaimRefused(Exception):
    """A claim failed :func:`check_claims`: ``problem`` is ``missing``, ``invalid``, ``expired`` or ``too_old``."""

    def __init__(self, claim: str, problem: str) -> None:
        super().__init__(f"{claim}: {problem}")
        self.claim = claim
        self.problem = problem


class JwksUnavailable(Exception):
    """The key set could not be fetched: ``code`` is ``unavailable``, ``too_large`` or ``invalid``."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# ----------------------------------------------------------------------------------------- shape and header


def b64json(part: str) -> dict[str, Any]:
    """One base64url JSON object segment, or Refused("malformed")."""
    try:
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError):
        raise Refused("malformed") from None
    if not isinstance(value, dict):
        raise Refused("malformed")
    return value


def segments(token: str, *, max_bytes: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The unverified header and payload of a compact JWS (routing only: nothing in them is trusted yet)."""
    if not token or len(token) > max_bytes:
        raise Refused("oversized")
    parts = token.split(".")
    if len(parts) != 3:
        raise Refused("malformed")
    return b64json(parts[0]), b64json(parts[1])


def check_header(
    header: Mapping[str, Any], *, algorithms: Sequence[str], certificate_chain: bool = False
) -> tuple[str, str | None]:
    """The header policy every verified token meets; returns ``(alg, kid)``.

    ``certificate_chain`` admits ``x5c`` for a caller that validates the chain against its own trust anchors
    (RFC 7523 device assertions); every other key-reference header is refused all the same.
    """
    alg = header.get("alg")
    if not isinstance(alg, str) or alg.lower() == "none":
        raise Refused("alg_none")
    if alg not in algorithms:
        raise Refused("alg_not_allowed")
    if "crit" in header:
        raise Refused("crit")
    if (KEY_REFERENCE_HEADERS - ({"x5c"} if certificate_chain else set())).intersection(header):
        raise Refused("key_reference")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH or not _KID.fullmatch(kid)):
        raise Refused("bad_kid")
    return alg, kid


def numeric_date(value: Any) -> float | None:
    """A NumericDate (RFC 7519 section 2) within a sane range, or None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e11:
        return float(value)
    return None


def public_key(pem: bytes, alg: str) -> PublicKey:
    """A PEM public key (SubjectPublicKeyInfo) imported for ``alg``."""
    if alg.startswith(("RS", "PS")):
        return RSAKey.import_key(pem)
    if alg.startswith("ES"):
        return ECKey.import_key(pem)
    return OKPKey.import_key(pem)


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


# ----------------------------------------------------------------------------------------- keys


def public_keys(document: Mapping[str, Any]) -> list[PublicKey]:
    """The public signature keys of a JWKS; symmetric, private, encryption and unparsable entries are skipped."""
    entries = document.get("keys")
    if not isinstance(entries, list):
        raise ValueError("not a JWKS")
    keys: list[PublicKey] = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("kty") not in {"RSA", "EC", "OKP"} or "d" in entry:
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = KeySet.import_key_set({"keys": [entry]}).keys[0]
        except (JoseError, ValueError, TypeError, KeyError):
            continue  # an unsupported key must not break the others
        if isinstance(key, RSAKey | ECKey | OKPKey):
            keys.append(key)
    return keys


class JwksCache:
    """One issuer's keys: inline, or fetched and cached, refetched at most once per floor for an unknown kid.

    Thread-safe; the lock is held only while fetching, so a slow issuer delays only its own tokens. When a
    refetch fails, keys fetched less than ``stale_grace_seconds`` ago stay in use (0: fail at once).
    """

    def __init__(
        self,
        *,
        http: HttpClient | None,
        uri: str | Callable[[], str] | None,
        jwks: Mapping[str, Any] | None = None,
        ttl_seconds: float,
        refresh_floor_seconds: float,
        stale_grace_seconds: float = 0.0,
        timeout_seconds: float | None = None,
        max_bytes: int = MAX_JWKS_BYTES,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if uri is not None and http is None:
            raise ValueError("a fetched JWKS needs an HTTP client")
        self._http = http
        self._uri = uri
        self._ttl = ttl_seconds
        self._floor = refresh_floor_seconds
        self._grace = stale_grace_seconds
        self._timeout = timeout_seconds
        self._max_bytes = max_bytes
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._keys: list[PublicKey] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self.fetches = 0
        if jwks is not None:
            self._keys = public_keys(jwks)
            self._fetched_at = float("inf")

    @property
    def fetched(self) -> bool:
        return self._uri is not None

    def _fetch(self) -> None:
        assert self._http is not None and self._uri is not None
        self._attempted_at = self._monotonic()
        self.fetches += 1
        try:
            uri = self._uri() if callable(self._uri) else self._uri
            response = self._http.get(
                uri, headers={"Accept": "application/json"}, max_bytes=self._max_bytes, timeout=self._timeout
            )
            if response.status != 200:
                raise JwksUnavailable("unavailable")
            try:
                document = response.json()
                keys = public_keys(document if isinstance(document, dict) else {})
            except ValueError:
                raise JwksUnavailable("invalid") from None
        except (JwksUnavailable, UpstreamUnavailable, UpstreamTooLarge) as exc:
            if self._fetched_at is not None and self._monotonic() - self._fetched_at <= self._grace:
                return  # a briefly unreachable issuer: keep using keys fetched moments ago
            if isinstance(exc, JwksUnavailable):
                raise
            raise JwksUnavailable("too_large" if isinstance(exc, UpstreamTooLarge) else "unavailable") from None
        self._keys, self._fetched_at = keys, self._monotonic()

    def _match(self, kid: str | None) -> list[PublicKey]:
        return [k for k in self._keys if kid is None or k.kid == kid]

    def key(self, kid: str | None, alg: str) -> PublicKey:
        """The one key that may have signed a token with this header."""
        now = self._monotonic()
        if self._uri is not None and (self._fetched_at is None or now - self._fetched_at > self._ttl):
            with self._lock:
                if self._fetched_at is None or self._monotonic() - self._fetched_at > self._ttl:
                    self._fetch()

        def usable() -> list[PublicKey]:
            named = self._match(kid)
            return named if kid is not None else [k for k in named if key_fits(k, alg)]

        found = usable()
        if not found and self._uri is not None:
            with self._lock:
                found = usable()
                recently = self._attempted_at is not None and self._monotonic() - self._attempted_at < self._floor
                if not found and not recently:
                    self._fetch()  # the issuer may have rotated its key
                    found = usable()
        if not found:
            raise Refused("unknown_kid")
        fitting = [k for k in found if key_fits(k, alg)]
        if not fitting:
            raise Refused("key_alg_mismatch")
        if len(fitting) > 1:
            raise Refused("ambiguous_kid")
        return fitting[0]


def key_set(jwks: Mapping[str, Any]) -> JwksCache:
    """A fixed key set that is never fetched, such as the public keys the broker publishes for itself."""
    return JwksCache(http=None, uri=None, jwks=jwks, ttl_seconds=float("inf"), refresh_floor_seconds=float("inf"))


# ----------------------------------------------------------------------------------------- signature and claims


def verify_signature(token: str, key: PublicKey, alg: str, *, max_header_bytes: int | None = None) -> dict[str, Any]:
    """The payload of ``token`` as a JSON object once its signature verifies with ``key`` under ``alg``.

    ``max_header_bytes`` raises joserfc's header cap (512 bytes, meant for headers without ``x5c``) for a
    caller whose header carries a certificate chain and whose token was size-checked already.
    """
    registry = jws.JWSRegistry(algorithms=[alg])
    if max_header_bytes is not None:
        registry.max_header_length = max_header_bytes
    try:
        payload = jws.deserialize_compact(token, key, registry=registry).payload
    except JoseError:
        raise Refused("bad_signature") from None
    try:
        claims = json.loads(payload)
    except ValueError:
        raise Refused("malformed") from None
    if not isinstance(claims, dict):
        raise Refused("malformed")
    return claims


@dataclass(frozen=True)
class ClaimRules:
    """What a caller requires of a token's claims; ``required`` names claims that must be present and non-blank."""

    issuer: str | None = None
    subject: str | None = None
    audiences: Sequence[str] = ()
    required: Sequence[str] = ()
    leeway: int = 0
    # ``iat`` older than this (plus leeway) is refused; None: no maximum age.
    max_age_seconds: int | None = None
    # OpenID Connect Core 1.0 section 3.1.3.7 for ID tokens: ``azp`` must name this client when present or
    # when there are several audiences; ``nonce`` must equal the one sent; with ``max_auth_age`` the
    # ``auth_time`` must be recent and not before ``auth_after`` (the request that asked for a new sign-in).
    authorized_party: str | None = None
    nonce: str | None = None
    max_auth_age: int | None = None
    auth_after: float | None = None


def check_claims(claims: Mapping[str, Any], rules: ClaimRules, *, now: float) -> None:
    """Validate registered and required claims with joserfc's ``JWTClaimsRegistry``.

    ClaimRefused names the first failure; a missing claim is reported in the order of ``rules.required``,
    so callers' refusal reasons are stable.
    """
    options: dict[str, Any] = {name: {"essential": True} for name in rules.required}
    if rules.issuer is not None:
        options["iss"] = {"essential": True, "value": rules.issuer}
    if rules.subject is not None:
        options["sub"] = {"essential": True, "value": rules.subject}
    if rules.audiences:
        options["aud"] = {"essential": True, "values": list(rules.audiences)}
    registry = jwt.JWTClaimsRegistry(now=int(now), leeway=rules.leeway, **options)
    try:
        registry.validate(dict(claims))
    except MissingClaimError as exc:
        missing = set(exc.claim.split(","))
        order = [*rules.required, "iss", "sub", "aud"]
        raise ClaimRefused(next((c for c in order if c in missing), exc.claim), "missing") from None
    except ExpiredTokenError:
        raise ClaimRefused("exp", "expired") from None
    except ClaimError as exc:
        raise ClaimRefused(exc.claim, "invalid") from None
    iat = claims.get("iat")
    limit = rules.max_age_seconds
    if limit is not None and isinstance(iat, int | float) and now - iat > limit + rules.leeway:
        raise ClaimRefused("iat", "too_old")
    _check_id_token_claims(claims, rules, now=now)


def _check_id_token_claims(claims: Mapping[str, Any], rules: ClaimRules, *, now: float) -> None:
    if rules.authorized_party is not None:
        aud = claims.get("aud")
        azp = claims.get("azp")
        if (azp is not None or (isinstance(aud, list) and len(aud) > 1)) and azp != rules.authorized_party:
            raise ClaimRefused("azp", "invalid")
    if rules.nonce is not None:
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not hmac.compare_digest(nonce.encode(), rules.nonce.encode()):
            raise ClaimRefused("nonce", "invalid")
    auth_time = claims.get("auth_time")
    if auth_time is None and rules.max_auth_age is None:
        return
    if isinstance(auth_time, bool) or not isinstance(auth_time, int | float):
        raise ClaimRefused("auth_time", "invalid")
    if rules.max_auth_age is not None:
        # Core 3.1.2.1: with max_age the IdP must re-authenticate if the last login is older than that.
        after = rules.auth_after
        if now - auth_time > rules.max_auth_age + rules.leeway or (
            after is not None and auth_time < after - rules.leeway
        ):
            raise ClaimRefused("auth_time", "too_old")


def verify(
    token: str, *, keys: JwksCache, algorithms: Sequence[str], max_bytes: int, rules: ClaimRules, now: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every step at once, for a caller that needs nothing from the unverified payload: ``(header, claims)``."""
    header, _ = segments(token, max_bytes=max_bytes)
    alg, kid = check_header(header, algorithms=algorithms)
    claims = verify_signature(token, keys.key(kid, alg), alg)
    check_claims(claims, rules, now=now)
    return header, claims


# ----------------------------------------------------------------------------------------- signing


def private_key(pem: str, alg: str) -> PrivateKey:
    """A PEM private key imported for ``alg`` (ES*: EC, EdDSA: OKP, otherwise RSA)."""
    if alg.startswith("ES"):
        return ECKey.import_key(pem)
    if alg == "EdDSA":
        return OKPKey.import_key(pem)
    return RSAKey.import_key(pem)


def client_assertion(
    *, client_id: str, audience: str, pem: str, alg: str, kid: str | None, now: float, lifetime: int = 60
) -> str:
    """An RFC 7523 section 2.2 client assertion: ``iss`` = ``sub`` = the client, single-use ``jti``."""
    header = {"alg": alg, **({"kid": kid} if kid else {})}
    issued = int(now)
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": secrets.token_urlsafe(24),
        "iat": issued,
        "exp": issued + lifetime,
    }
    return sign(header, claims, private_key(pem, alg))


def generate_key(alg: str) -> ECKey | OKPKey:
    """A new private signing key for ``alg`` (ES256: P-256, EdDSA: Ed25519) with a thumbprint ``kid``."""
    if alg == "ES256":
        return ECKey.generate_key("P-256", private=True, auto_kid=True)
    if alg == "EdDSA":
        return OKPKey.generate_key("Ed25519", private=True, auto_kid=True)
    raise ValueError(f"no key generation for {alg}")


def load_jwk(data: Mapping[str, Any]) -> PrivateKey:
    """A key from its JWK form (as :func:`private_jwk` wrote it)."""
    key = KeySet.import_key_set({"keys": [dict(data)]}).keys[0]
    assert isinstance(key, ECKey | OKPKey | RSAKey)
    return key


def key_id(key: PrivateKey) -> str:
    """The ``kid`` of a key that has one (:func:`generate_key` sets its thumbprint)."""
    kid = key.kid
    assert kid is not None
    return kid


def public_jwk(key: PrivateKey, alg: str) -> dict[str, Any]:
    """The public half of ``key`` as a JWK for a published key set: a signing key (``use: sig``) for ``alg``."""
    return {**key.as_dict(private=False), "alg": alg, "use": "sig"}


def private_jwk(key: PrivateKey) -> dict[str, Any]:
    """The whole key, private half included, as a JWK (for storage sealed at rest; :func:`load_jwk` reads it)."""
    return dict(key.as_dict(private=True))


def allow_eddsa() -> None:
    """Silence joserfc's deprecation warning for ``EdDSA``.

    joserfc flags "EdDSA" as superseded by the fully specified "Ed25519" (RFC 9864); verifiers in the field
    still expect "EdDSA", so a configuration that asks for it gets it without a warning on every token.
    """
    warnings.filterwarnings("ignore", message="EdDSA is deprecated", module="joserfc")


def ed25519(key: Any) -> OKPKey:
    """A ``cryptography`` Ed25519 private or public key as a JOSE key."""
    return OKPKey.import_key(key)


def sign_bytes(header: Mapping[str, Any], payload: bytes, key: PrivateKey) -> str:
    """A compact JWS over arbitrary bytes (not a JWT: the payload is the caller's own format)."""
    alg = str(header["alg"])
    return jws.serialize_compact(dict(header), payload, key, [alg])


def unverified_payload(token: str) -> bytes:
    """A compact JWS's payload without checking its signature: only for tokens the broker signed itself."""
    try:
        return jws.extract_compact(token.encode()).payload
    except JoseError:
        raise Refused("malformed") from None


def unverified_kid(token: str) -> str | None:
    """A compact JWS's header ``kid`` without checking anything: only to choose a refusal reason, never to trust."""
    try:
        kid = jws.extract_compact(token.encode()).headers().get("kid")
    except (JoseError, ValueError):
        return None
    return kid if isinstance(kid, str) else None


def verify_bytes(token: str, key: PublicKey, alg: str) -> bytes:
    """A compact JWS's payload once its signature verifies with ``key`` under ``alg``."""
    try:
        return jws.deserialize_compact(token, key, [alg]).payload
    except (JoseError, ValueError):
        raise Refused("bad_signature") from None


def sign(header: Mapping[str, Any], claims: Mapping[str, Any], key: PrivateKey) -> str:
    """A compact JWT signed with ``key`` under ``header["alg"]``."""
    alg = str(header["alg"])
    return jwt.encode(dict(header), dict(claims), key, algorithms=[alg])
