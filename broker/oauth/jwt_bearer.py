"""The JWT bearer grant (RFC 7523 section 2.1) for devices: a signed assertion carrying its certificate chain.

Request: ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer``, ``assertion`` (a JWS in compact form),
and the role as ``role`` (or ``audience``) by name or ``resource`` by ARN, optional ``duration_seconds``.
The response is the token exchange's AWS credentials form.

The assertion proves possession of the certificate's key; it works through any proxy, since nothing depends
on the TLS connection. Checked, in this order, all refused as ``invalid_grant`` (section 3.1):

1. size before decoding, the compact shape, and the header: ``alg`` from a short asymmetric list (never
   ``none`` or HS*), ``x5c`` present (RFC 7515 section 4.1.6: the leaf first, base64 DER), no ``crit``, no
   ``jku``/``x5u``/``jwk`` (nothing is fetched), ``x5t#S256`` if present naming the leaf;
2. the signature, with the leaf certificate's public key (an assertion signed by any other key fails), and
   the claims (section 3): ``iss``, ``sub`` and ``jti`` present, ``aud`` the broker's token endpoint or
   issuer identifier, ``exp`` in the future and at most ``max_assertion_lifetime_seconds`` after ``iat``,
   ``nbf`` if present;
3. the chain (``broker.connectors.x509``): path, extensions, revocation, mapping; then the role decision;
4. the ``jti``, spent once in the replay store (keyed by the certificate), across every broker process.
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime, timedelta
from typing import Any

from broker import certificates, jose
from broker.connectors.x509 import CertificateFacts, leaf_facts, refuse
from broker.context import Clock, Context
from broker.devices import DeviceRequest, Devices
from broker.errors import BrokerError, InvalidGrant, InvalidRequest, ReplayDetected
from broker.keys import Keys
from broker.oauth.clients import AuthenticatedClient
from broker.oauth.grants import Params
from broker.settings import X509StoreConfig
from broker.store import queries
from broker.store.db import Database

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# Asymmetric algorithms only; a device key is EC P-256/P-384, RSA or Ed25519.
ALGORITHMS = certificates.SIGNING_ALGORITHMS
# Four certificates of a few kB each, base64-encoded, plus header and claims.
MAX_ASSERTION_BYTES = 48 * 1024
MAX_CLAIM_CHARS = 256
# Defaults for the claim checks when the chain has not yet named its store.
DEFAULT_LIFETIME_SECONDS, DEFAULT_SKEW_SECONDS = 300, 60


_CLAIMS_REQUIRED = ("claims", f"iss, sub and jti are required (strings of at most {MAX_CLAIM_CHARS} characters)")
# Claim failures from broker.jose as (reason, message); anything else is a missing or malformed claim.
_CLAIM_REFUSALS = {
    ("aud", "missing"): ("audience", "aud must be this broker's token endpoint or issuer"),
    ("aud", "invalid"): ("audience", "aud must be this broker's token endpoint or issuer"),
    ("exp", "missing"): ("claims", "exp and iat are required"),
    ("iat", "missing"): ("claims", "exp and iat are required"),
    ("exp", "expired"): ("expired", "it has expired"),
    ("iat", "invalid"): ("not_yet_valid", "it is not valid yet (check the device's clock)"),
    ("nbf", "invalid"): ("not_yet_valid", "it is not valid yet (check the device's clock)"),
}


def _fail(reason: str, message: str) -> InvalidGrant:
    return InvalidGrant(f"The assertion is not acceptable: {message}.", reason=f"x509.assertion_{reason}")


class JwtBearerGrant:
    """``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`` with an ``x5c`` certificate chain."""

    grant_type = GRANT_TYPE

    def __init__(self, devices: Devices, *, db: Database, keys: Keys, clock: Clock, audiences: tuple[str, ...]) -> None:
        self.devices = devices
        self.db = db
        self.keys = keys
        self.clock = clock
        self.audiences = audiences

    def handle(self, params: Params, client: AuthenticatedClient | None, ctx: Context) -> dict[str, Any]:
        assertion = params.get("assertion") or ""
        role = params.get("role")
        targets = params.all("resource") + params.all("audience") + ((role,) if role else ())
        detail: dict[str, Any] = {"client_id": client.client_id if client else None}
        claims: dict[str, Any] = {}
        try:
            request = DeviceRequest.of(targets, params.get("duration_seconds"))
            header, ders = self._header(assertion)
        except BrokerError as exc:
            # Refused before the chain was read: the one refusal event, with the leaf's facts if it parses.
            facts = _presented_facts(assertion)
            detail.update(facts.to_json() if facts else {})
            raise self.devices.deny(exc, ctx=ctx, detail={"proof": "jwt", **detail}) from None

        def prove(leaf: certificates.Certificate, store: X509StoreConfig | None) -> dict[str, Any]:
            claims.update(self._verify(assertion, header, leaf, store))
            return {"assertion_jti": claims["jti"], "iss": claims["iss"][:MAX_CLAIM_CHARS]}

        def consume(facts: CertificateFacts) -> None:
            expires = datetime.fromtimestamp(claims["exp"], UTC) + timedelta(seconds=DEFAULT_SKEW_SECONDS * 2)
            try:
                with self.db.transaction() as session:
                    queries.consume_once(
                        session,
                        kind="x509_jti",
                        key_hmac=self.keys.macs("x509-assertion", f"{facts.fingerprint}\n{claims['jti']}"),
                        expires_at=expires,
                    )
            except ReplayDetected:
                raise _fail("replay", "it was already used (mint a new one with a fresh jti)") from None

        return self.devices.sign_in(ders, request, proof="jwt", ctx=ctx, prove=prove, consume=consume, detail=detail)

    def _header(self, assertion: str) -> tuple[dict[str, Any], list[bytes]]:
        if not assertion:
            raise InvalidRequest("assertion is required.", reason="x509.assertion_missing")
        if len(assertion) > MAX_ASSERTION_BYTES:
            raise refuse("chain_too_large", "the assertion is larger than any acceptable certificate chain")
        parts = assertion.split(".")
        if len(parts) != 3:
            raise _fail("malformed", "it is not a JWS in compact form")
        try:
            header = jose.b64json(parts[0])
        except jose.Refused:
            raise _fail("malformed", "its header is not base64url JSON") from None
        try:
            jose.check_header(header, algorithms=tuple(ALGORITHMS), certificate_chain=True)
        except jose.Refused as refusal:
            if refusal.code in {"alg_none", "alg_not_allowed"}:
                raise _fail("alg", f"alg must be one of {sorted(ALGORITHMS)}") from None
            raise _fail("header", "crit, jku, x5u and jwk headers are never accepted") from None
        chain = header.get("x5c")
        if not isinstance(chain, list) or not chain or not all(isinstance(c, str) for c in chain):
            raise _fail("no_x5c", "the x5c header must carry the certificate chain, leaf first")
        if len(chain) > self.devices.max_chain:
            raise refuse("chain_too_large", f"the chain holds more than {self.devices.max_chain} certificates")
        try:
            # RFC 7515 section 4.1.6: base64 (not base64url) DER.
            ders = [base64.b64decode(c, validate=True) for c in chain]
        except (binascii.Error, ValueError):
            raise _fail("malformed", "an x5c entry is not base64 DER") from None
        return header, ders

    def _verify(
        self, assertion: str, header: dict[str, Any], leaf: certificates.Certificate, store: X509StoreConfig | None
    ) -> dict[str, Any]:
        alg = str(header["alg"])
        if not certificates.key_fits(leaf, alg):
            raise _fail("alg", "alg does not fit the certificate's key")
        thumbprint = header.get("x5t#S256")
        if thumbprint is not None and thumbprint != certificates.sha256_thumbprint(leaf):
            raise _fail("header", "x5t#S256 does not name the leaf certificate")
        pem = certificates.public_key_pem(leaf)
        try:
            claims = jose.verify_signature(
                assertion, jose.public_key(pem, alg), alg, max_header_bytes=MAX_ASSERTION_BYTES
            )
        except jose.Refused as refusal:
            if refusal.code == "malformed":
                raise _fail("malformed", "its payload is not a JSON object") from None
            raise _fail("signature", "its signature does not verify with the certificate's key") from None
        return self._claims(claims, store)

    def _claims(self, claims: dict[str, Any], store: X509StoreConfig | None) -> dict[str, Any]:
        lifetime = store.max_assertion_lifetime_seconds if store else DEFAULT_LIFETIME_SECONDS
        skew = store.clock_skew_seconds if store else DEFAULT_SKEW_SECONDS
        now = self.clock().timestamp()
        rules = jose.ClaimRules(audiences=self.audiences, required=("iss", "sub", "jti", "exp", "iat"), leeway=skew)
        try:
            jose.check_claims(claims, rules, now=now)
        except jose.ClaimRefused as refused:
            raise _fail(*_CLAIM_REFUSALS.get((refused.claim, refused.problem), _CLAIMS_REQUIRED)) from None
        for name in ("iss", "sub", "jti"):
            if len(claims[name]) > MAX_CLAIM_CHARS:
                raise _fail(*_CLAIMS_REQUIRED)
        exp, iat = jose.numeric_date(claims["exp"]), jose.numeric_date(claims["iat"])
        if exp is None or iat is None:
            raise _fail("claims", "exp and iat are required")
        if exp - iat > lifetime:
            raise _fail("lifetime", f"it lives longer than {lifetime} seconds; mint one per request")
        return claims


def _presented_facts(assertion: str) -> CertificateFacts | None:
    """For the audit trail only: the fingerprint, issuer and serial of the ``x5c`` leaf, if it can be read."""
    try:
        chain = jose.b64json(assertion.split(".")[0]).get("x5c") if len(assertion) <= MAX_ASSERTION_BYTES else None
        if not isinstance(chain, list) or not chain or not isinstance(chain[0], str):
            return None
        return leaf_facts([base64.b64decode(chain[0], validate=True)])
    except (jose.Refused, binascii.Error, ValueError):
        return None
