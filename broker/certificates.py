"""Certificates and keys read from bytes: the broker's one place that parses X.509 certificates and PEM keys
with ``cryptography`` for everything but path validation (``broker.connectors.x509``, with its CRLs).

A leaf module (it imports nothing of the broker), so settings can check a PEM at start-up and monitoring can
read an expiry date without importing the certificate identity store.
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

Certificate = x509.Certificate

# The JWS algorithms a certificate's key may sign with (RFC 7518 section 3.1, RFC 8037): asymmetric only.
_KEY_TYPES: dict[str, type] = {
    "ES256": ec.EllipticCurvePublicKey,
    "ES384": ec.EllipticCurvePublicKey,
    "PS256": rsa.RSAPublicKey,
    "RS256": rsa.RSAPublicKey,
    "EdDSA": ed25519.Ed25519PublicKey,
}
SIGNING_ALGORITHMS = tuple(_KEY_TYPES)


def load_pem_certificates(data: bytes) -> list[Certificate]:
    """Every certificate in a PEM bundle; ValueError when the bytes are not PEM certificates."""
    return list(x509.load_pem_x509_certificates(data))


def load_der_certificate(der: bytes) -> Certificate:
    """One DER certificate; ValueError when it is not one."""
    return x509.load_der_x509_certificate(der)


def certificate_body(value: str) -> bytes:
    """The DER bytes of a PEM certificate or of its base64 body; ValueError when it is not a certificate."""
    body = re.sub(r"-----(BEGIN|END) CERTIFICATE-----|\s", "", value)
    try:
        der = base64.b64decode(body, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    load_der_certificate(der)
    return der


def not_after(certificate: Certificate) -> float:
    """When the certificate expires, as Unix time."""
    return certificate.not_valid_after_utc.timestamp()


def sha256_thumbprint(certificate: Certificate) -> str:
    """The base64url SHA-256 of the DER certificate, as JWS ``x5t#S256`` carries it (RFC 7515 section 4.1.8)."""
    return base64.urlsafe_b64encode(certificate.fingerprint(hashes.SHA256())).rstrip(b"=").decode()


def key_fits(certificate: Certificate, alg: str) -> bool:
    """Whether the certificate's public key is of the kind ``alg`` signs with."""
    kind = _KEY_TYPES.get(alg)
    return kind is not None and isinstance(certificate.public_key(), kind)


def public_key_pem(certificate: Certificate) -> bytes:
    """The certificate's public key as a PEM SubjectPublicKeyInfo."""
    return certificate.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def ed25519_private_key_problem(pem: str) -> str | None:
    """Why ``pem`` is not an Ed25519 private key in PEM, or None when it is one."""
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        return "is not a PEM private key (make one with `openssl genpkey -algorithm ed25519`)"
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        return "must be an Ed25519 key (`openssl genpkey -algorithm ed25519`)"
    return None
