"""The workload issuer of a dev-mode broker: a local signing key that stands in for a platform's (Kubernetes,
GitHub Actions) so token exchange can be tried without one.

``broker dev`` trusts this issuer (``oauth.workload_issuers`` named ``dev-workload``, its public key inline);
``broker dev-token`` signs a workload JWT with it. The private key stays in the dev data folder (mode 0600).
Nothing outside dev mode reads it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from broker import jose

NAME = "dev-workload"
ISSUER = "urn:identity-broker:dev-workload"
AUDIENCE = "broker-dev"
DEFAULT_SUBJECT = "system:serviceaccount:demo:deployer"
KEY_FILE = "workload-key.json"
ALGORITHM = "ES256"


def _key(data_dir: Path, *, create: bool) -> Any:
    path = data_dir / KEY_FILE
    if path.exists():
        return jose.load_jwk(json.loads(path.read_text()))
    if not create:
        raise FileNotFoundError(f"{path} does not exist: start `broker dev` once (it creates the dev issuer key)")
    key = jose.generate_key(ALGORITHM)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(key.as_dict(private=True), handle)
    return key


def issuer_config(data_dir: Path) -> dict[str, Any]:
    """The ``oauth.workload_issuers`` entry for the dev issuer (creating its key on first use)."""
    key = _key(data_dir, create=True)
    return {
        "name": NAME,
        "issuer": ISSUER,
        "jwks": {"keys": [{**key.as_dict(private=False), "use": "sig", "alg": ALGORITHM}]},
        "audiences": [AUDIENCE],
        "algorithms": [ALGORITHM],
        "max_token_age_seconds": 3600,
    }


def mint(
    data_dir: Path,
    *,
    subject: str = DEFAULT_SUBJECT,
    audience: str = AUDIENCE,
    ttl_seconds: int = 600,
    claims: dict[str, str] | None = None,
) -> str:
    """A workload JWT from the dev issuer, like a platform's service-account token."""
    key = _key(data_dir, create=False)
    now = int(time.time())
    body: dict[str, Any] = {
        **(claims or {}),
        "iss": ISSUER,
        "sub": subject,
        "aud": audience,
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": secrets.token_urlsafe(16),
    }
    return jose.sign({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"}, body, key)
