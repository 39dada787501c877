"""Workload tokens for tests: a Kubernetes-shaped service-account issuer, and hostile token builders.

Tokens are signed with joserfc exactly as a real issuer would; the hostile builders then mutate headers,
claims or signatures, so the inputs stay current with the verifier rather than being canned strings.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: Any) -> str:
    return b64(json.dumps(value, separators=(",", ":")).encode())


class TestIssuer:
    """A platform that signs workload JWTs with its own key (RS256, like Kubernetes, by default)."""

    __test__ = False  # not a pytest class

    def __init__(self, issuer: str = K8S_ISSUER, *, alg: str = "RS256") -> None:
        self.issuer = issuer
        self.alg = alg
        self.key: RSAKey | ECKey = (
            RSAKey.generate_key(2048, auto_kid=True)
            if alg.startswith(("RS", "PS"))
            else ECKey.generate_key("P-256", auto_kid=True)
        )

    @property
    def kid(self) -> str:
        assert self.key.kid is not None
        return self.key.kid

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "use": "sig", "alg": self.alg}]}

    def public_pem(self) -> bytes:
        return self.key.as_pem(private=False)

    def service_account_claims(
        self,
        *,
        namespace: str = "shop",
        service_account: str = "api",
        audience: str | list[str] = "https://broker.test",
        lifetime: int = 600,
        issued_ago: int = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        """The claims of a projected service-account token (Kubernetes TokenRequest API)."""
        now = int(time.time()) - issued_ago
        return {
            "aud": [audience] if isinstance(audience, str) else audience,
            "exp": now + lifetime,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "jti": secrets.token_hex(16),
            "kubernetes.io": {
                "namespace": namespace,
                "node": {"name": "node-1", "uid": "0c1e-node"},
                "pod": {"name": f"{service_account}-7d9f", "uid": "7d9f-pod"},
                "serviceaccount": {"name": service_account, "uid": "5a2b-sa"},
            },
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            **extra,
        }

    def sign(self, claims: dict[str, Any], *, header: dict[str, Any] | None = None, key: Any = None) -> str:
        base = {"alg": self.alg, "kid": self.kid}
        merged = {**base, **(header or {})}
        merged = {k: v for k, v in merged.items() if v is not None}
        # joserfc adds typ: JWT by default; Kubernetes does not send typ at all.
        return jwt.encode(merged, claims, key or self.key, algorithms=[merged["alg"]], default_type=None)

    def token(self, **kwargs: Any) -> str:
        return self.sign(self.service_account_claims(**kwargs))


def unsigned(claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """``alg: none`` (RFC 7519 section 6): an empty signature."""
    return f"{b64json({'alg': 'none', **(header or {})})}.{b64json(claims)}."


def hs256_with_public_key(claims: dict[str, Any], public_pem: bytes, kid: str) -> str:
    """Key confusion: an HMAC "signature" keyed with the issuer's public key, which everybody has."""
    signing_input = f"{b64json({'alg': 'HS256', 'kid': kid, 'typ': 'JWT'})}.{b64json(claims)}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def sign_raw(header: dict[str, Any], claims: dict[str, Any], key: RSAKey | ECKey) -> str:
    """Sign without any library-side header checks (joserfc refuses to *create* some hostile headers)."""
    from joserfc.jws import JWSRegistry

    signing_input = f"{b64json(header)}.{b64json(claims)}"
    signature = JWSRegistry.algorithms[header["alg"]].sign(signing_input.encode(), key)  # type: ignore[arg-type]
    return f"{signing_input}.{b64(signature)}"
