"""The encrypted credential cache: AES-256-GCM under a per-user key, files mode 0600.

The key lives in ``cache.key`` (mode 0600) in the helper's config folder; the long-lived secret, the broker
refresh token, lives in the OS keyring (``store.py``). Cached credentials are served until
``REFRESH_MARGIN_SECONDS`` before they expire, so a command never starts with credentials about to lapse.

File layout: ``b"BKC1"`` + expiry (8-byte big-endian Unix time) + 12-byte nonce + ciphertext of the exact
credential_process JSON. The header is authenticated as associated data together with (url, role,
duration), so the expiry cannot be edited and a file cannot be swapped in for another role. The plaintext is
printed as it is: the cache-hit path needs no JSON parser.
"""

from __future__ import annotations

import os
import time

from broker.client.paths import cache_dir, cache_file, config_dir, write_private

# typing is not imported at run time: it alone costs a few milliseconds on every AWS CLI call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _aesgcm() -> Any:
    """cryptography's AES-GCM class, taken from its compiled binding when that is where it lives.

    ``cryptography.hazmat.primitives.ciphers.aead.AESGCM`` is a re-export of this very class, but importing the
    public module costs about three times as long (it pulls in ``typing`` and the cipher registry), and this
    path runs on every AWS CLI call. ``tests/client/test_cache.py`` checks that both are the same class, so a
    cryptography release that moves it fails the tests instead of silently falling back.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl as rust_openssl

        return rust_openssl.aead.AESGCM
    except (ImportError, AttributeError):  # pragma: no cover (older or newer cryptography)
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM


# Refresh five minutes before expiry (the AWS SDKs refresh process credentials about as early).
REFRESH_MARGIN_SECONDS = 300
MAGIC = b"BKC1"
_HEADER = len(MAGIC) + 8
_NONCE = 12


def _key() -> bytes:
    path = os.path.join(config_dir(), "cache.key")
    try:
        with open(path, "rb") as handle:
            key = handle.read()
        if len(key) == 32:
            return key
    except FileNotFoundError:
        pass
    key = os.urandom(32)  # AES-256
    write_private(path, key)
    return key


def _aad(header: bytes, url: str, role: str, duration: int | None) -> bytes:
    return header + f"\n{url}\n{role}\n{duration or 0}".encode()


def read(url: str, role: str, duration: int | None, *, now: float | None = None) -> bytes | None:
    """The cached credential_process JSON (bytes) if it is fresh enough, else None."""
    try:
        with open(cache_file(url, role, duration), "rb") as handle:
            blob = handle.read()
    except OSError:
        return None
    header = blob[:_HEADER]
    if len(blob) <= _HEADER + _NONCE or not header.startswith(MAGIC):
        return None
    expires = int.from_bytes(header[len(MAGIC) :], "big")
    if expires - (time.time() if now is None else now) <= REFRESH_MARGIN_SECONDS:
        return None
    nonce = blob[_HEADER : _HEADER + _NONCE]
    try:
        plain: bytes = _aesgcm()(_key()).decrypt(nonce, blob[_HEADER + _NONCE :], _aad(header, url, role, duration))
    except Exception as exc:
        if type(exc).__name__ != "InvalidTag":  # cryptography.exceptions.InvalidTag, not imported on the hot path
            raise
        return None  # tampered, swapped, or written under another key: fetch anew
    return plain


def write(url: str, role: str, duration: int | None, credentials_json: bytes, expires_at: float) -> None:
    header = MAGIC + int(expires_at).to_bytes(8, "big")
    nonce = os.urandom(_NONCE)
    sealed = _aesgcm()(_key()).encrypt(nonce, credentials_json, _aad(header, url, role, duration))
    write_private(cache_file(url, role, duration), header + nonce + sealed)


def clear() -> int:
    folder = cache_dir()
    removed = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.endswith(".cred"):
                os.unlink(os.path.join(folder, name))
                removed += 1
    return removed
