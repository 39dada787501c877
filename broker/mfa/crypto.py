"""TOTP secrets at rest: AES-256-GCM (NIST SP 800-38D) under a rotatable key list.

Each configured key (any string of 32+ characters) is stretched with HKDF-SHA256 (RFC 5869) to a 256-bit AES
key. A sealed value names its key by a short fingerprint, so decryption picks the right key directly and an
old key keeps working until every value has been re-sealed under the newest one (``needs_rotation``).
The additional authenticated data binds a value to its owner: a ciphertext copied to another principal's
row does not decrypt.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from broker.errors import ServiceUnavailable

_VERSION = "v1"
_NONCE_BYTES = 12  # AES-GCM's standard 96-bit nonce (NIST SP 800-38D section 8.2), random per value.


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SecretBox:
    """Seal with the first key, open with any key. Keys are raw bytes of configured secrets."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._keys: dict[str, AESGCM] = {}
        self._current = ""
        for raw in keys:
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"broker mfa secret").derive(raw)
            kid = hashlib.sha256(key).hexdigest()[:8]
            self._keys.setdefault(kid, AESGCM(key))
            self._current = self._current or kid

    def seal(self, plaintext: str, *, context: str) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._keys[self._current].encrypt(nonce, plaintext.encode(), context.encode())
        return f"{_VERSION}.{self._current}.{_b64(nonce + sealed)}"

    def open(self, value: str, *, context: str) -> str:
        """Decrypt; a value under an unknown key or tampered with is a 503 (fail closed), never a guess."""
        try:
            version, kid, body = value.split(".", 2)
            aead = self._keys[kid] if version == _VERSION else None
            if aead is None:
                raise KeyError(kid)
            data = _unb64(body)
            return aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], context.encode()).decode()
        except (ValueError, KeyError, InvalidTag):
            raise ServiceUnavailable(
                "A stored factor cannot be decrypted with the configured keys. Ask an administrator to check "
                "mfa.encryption_keys.",
                reason="mfa.secret_undecryptable",
            ) from None

    def needs_rotation(self, value: str) -> bool:
        return value.split(".", 2)[1:2] != [self._current]
