"""The encrypted credential cache: AES-256-GCM under a per-user key, files mode 0600.

The key lives in ``cache.key`` (mode 0600) in the helper's config folder; the long-lived secret, the broker
refresh token, lives in the OS keyring (``store.py``). Cached credentials are served until ``REFRESH_MARGIN``
before they expire, so a command never starts with credentials about to lapse.
"""

from __future__ import annotations

import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.client.paths import cache_file, config_dir, write_private

# Refresh five minutes before expiry (the AWS SDKs refresh process credentials about as early).
REFRESH_MARGIN_SECONDS = 300
_NONCE = 12


def _key() -> bytes:
    path = config_dir() / "cache.key"
    try:
        key = path.read_bytes()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = AESGCM.generate_key(bit_length=256)
    write_private(path, key)
    return key


def _aad(url: str, role: str) -> bytes:
    # Binding the ciphertext to (broker, role) stops a cache file being swapped in for another role.
    return f"{url}\n{role}".encode()


def read(url: str, role: str, duration: int | None, *, now: float | None = None) -> dict[str, Any] | None:
    """The cached credential_process JSON if it is still fresh enough, else None."""
    path = cache_file(url, role, duration)
    try:
        blob = path.read_bytes()
        plain = AESGCM(_key()).decrypt(blob[:_NONCE], blob[_NONCE:], _aad(url, role))
        creds: dict[str, Any] = json.loads(plain)
        expires = datetime.fromisoformat(creds["Expiration"].replace("Z", "+00:00")).timestamp()
    except (OSError, ValueError, KeyError, InvalidTag):  # missing, truncated or tampered: fetch anew
        return None
    if expires - (time.time() if now is None else now) <= REFRESH_MARGIN_SECONDS:
        return None
    return creds


def write(url: str, role: str, duration: int | None, creds: dict[str, Any]) -> None:
    nonce = os.urandom(_NONCE)
    sealed = AESGCM(_key()).encrypt(nonce, json.dumps(creds).encode(), _aad(url, role))
    write_private(cache_file(url, role, duration), nonce + sealed)


def clear() -> int:
    from broker.client.paths import cache_dir

    removed = 0
    folder: Path = cache_dir()
    if folder.exists():
        for item in folder.glob("*.cred"):
            item.unlink()
            removed += 1
    return removed
