"""`broker device credential-process`: AWS credentials for a device that holds a certificate and its key.

The AWS CLI and SDKs run it as ``credential_process`` on every call, so a cache hit costs one file read, one
SHA-256 of the certificate file and one AES-GCM decryption (the same encrypted cache as the person's helper,
``cache.py``, bound to the broker URL, the role and the certificate). On a miss it signs an RFC 7523
assertion with the device key (``x5c`` = the certificate chain, ``aud`` = the broker's issuer, one minute
of life, a fresh ``jti``) and posts it to the token endpoint; with ``--mtls`` it presents the certificate
in a mutual-TLS connection to ``/device/credentials`` instead.

Stdout carries exactly the credential_process JSON; on failure, exit 1 and one line on stderr. The key and
the credentials are never written to stderr.
"""

from __future__ import annotations

import os
import sys

USAGE = (
    "usage: broker device credential-process --cert FILE --key FILE [--chain FILE] --role ROLE "
    "[--url BROKER_URL] [--duration SECONDS] [--mtls] [--ca-bundle FILE]"
)
_OPTIONS = {"--cert", "--key", "--chain", "--role", "--url", "--duration", "--ca-bundle"}
_FLAGS = {"--mtls"}
_FIELDS = ("Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# The assertion is minted for one request; the broker refuses long-lived ones.
ASSERTION_SECONDS = 60


def _parse(argv: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    items = iter(argv)
    for item in items:
        name, _, value = item.partition("=")
        if name in _FLAGS:
            options[name[2:]] = "1"
            continue
        if name not in _OPTIONS:
            raise ValueError(f"unknown option {item!r}")
        options[name[2:]] = value or next(items, "")
    for required in ("cert", "key", "role"):
        if not options.get(required):
            raise ValueError(f"--{required} is required")
    options["url"] = (options.get("url") or os.environ.get("BROKER_URL") or "").rstrip("/")
    if not options["url"]:
        raise ValueError("--url (or BROKER_URL) is required")
    return options


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def fetch(options: dict[str, str]) -> bytes:
    """Cache hit, or one sign-in with the certificate (then cached)."""
    import hashlib

    from broker.client import cache

    cert_pem = _read(options["cert"])
    chain_pem = _read(options["chain"]) if options.get("chain") else b""
    duration = int(options["duration"]) if options.get("duration") else None
    # The cache entry is bound to the certificate: a renewed certificate starts afresh.
    scope = f"{options['url']}#device={hashlib.sha256(cert_pem + chain_pem).hexdigest()}"
    cached = cache.read(scope, options["role"], duration)
    if cached is not None:
        return cached
    answer = _sign_in(options, cert_pem, chain_pem, duration)
    credentials = answer.get("aws_credentials")
    if not isinstance(credentials, dict) or any(field not in credentials for field in _FIELDS):
        raise RuntimeError("the broker's answer lacked credential fields")
    import json
    from datetime import datetime

    body = json.dumps({field: credentials[field] for field in _FIELDS}).encode()
    expires = datetime.fromisoformat(str(credentials["Expiration"]).replace("Z", "+00:00")).timestamp()
    cache.write(scope, options["role"], duration, body, expires)
    return body


def _sign_in(options: dict[str, str], cert_pem: bytes, chain_pem: bytes, duration: int | None) -> dict[str, object]:
    import ssl

    import httpx

    url = options["url"]
    context = ssl.create_default_context(cafile=options.get("ca-bundle") or None)
    data = {"duration_seconds": str(duration)} if duration else {}
    if options.get("mtls"):
        context.load_cert_chain(options["cert"], options["key"])
    with httpx.Client(timeout=20, follow_redirects=False, trust_env=False, verify=context) as http:
        if options.get("mtls"):
            response = http.post(f"{url}/device/credentials", data={"role": options["role"], **data})
        else:
            issuer = http.get(f"{url}/.well-known/oauth-authorization-server").json().get("issuer")
            assertion = sign_assertion(cert_pem, chain_pem, _read(options["key"]), audience=str(issuer))
            response = http.post(
                f"{url}/oauth2/token",
                data={"grant_type": JWT_BEARER, "assertion": assertion, "role": options["role"], **data},
            )
    try:
        body: dict[str, object] = response.json()
    except ValueError:
        body = {}
    if response.status_code != 200:
        message = body.get("error_description") or f"HTTP {response.status_code}"
        raise RuntimeError(f"{body.get('error', 'refused')}: {message}")
    return body


def sign_assertion(cert_pem: bytes, chain_pem: bytes, key_pem: bytes, *, audience: str) -> str:
    """An RFC 7523 assertion signed with the device key, carrying the chain in ``x5c`` (leaf first)."""
    import base64
    import secrets
    import time

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
    from joserfc import jws
    from joserfc.jwk import ECKey, OKPKey, RSAKey

    certificates = x509.load_pem_x509_certificates(cert_pem + b"\n" + chain_pem)
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in certificates]
    private = serialization.load_pem_private_key(key_pem, password=None)
    key: ECKey | RSAKey | OKPKey
    if isinstance(private, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "ES256", "secp384r1": "ES384"}.get(private.curve.name)
        if alg is None:
            raise ValueError(f"the key's curve {private.curve.name} is not supported (use P-256 or P-384)")
        key = ECKey.import_key(key_pem)
    elif isinstance(private, rsa.RSAPrivateKey):
        alg, key = "PS256", RSAKey.import_key(key_pem)
    elif isinstance(private, ed25519.Ed25519PrivateKey):
        alg, key = "EdDSA", OKPKey.import_key(key_pem)
    else:
        raise ValueError("the key must be EC (P-256/P-384), RSA or Ed25519")
    now = int(time.time())
    leaf = certificates[0]
    claims = {
        "iss": leaf.subject.rfc4514_string(),
        "sub": leaf.subject.rfc4514_string(),
        "aud": audience,
        "iat": now,
        "exp": now + ASSERTION_SECONDS,
        "jti": secrets.token_urlsafe(24),
    }
    import json

    header = {"alg": alg, "typ": "JWT", "x5c": x5c}
    return jws.serialize_compact(header, json.dumps(claims).encode(), key, algorithms=[alg])


def main(argv: list[str]) -> int:
    try:
        options = _parse(argv)
        creds = fetch(options)
    except ValueError as exc:
        sys.stderr.write(f"broker: {exc}\n{USAGE}\n")
        return 2
    except Exception as exc:
        sys.stderr.write(f"broker: {str(exc)[:500] or type(exc).__name__}\n")
        return 1
    sys.stdout.buffer.write(creds + b"\n")
    return 0
