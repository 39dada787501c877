"""TOTP secrets at rest, sealed by ``broker.encryption`` under a rotatable key list.

The keys, newest first: every ``mfa.encryption_keys`` entry (any string of 32+ characters), then a key derived
from each root secret of the keyring (``broker.keys``). Explicit keys are stretched with HKDF-SHA256 (RFC
5869) to 256-bit AES keys. A sealed value names its key by a short fingerprint of that AES key, so decryption
picks it directly. The derived keys stay readable after explicit keys are configured: moving from the
default key to ``encryption_keys`` locks nobody out, and ``broker mfa rotate-key`` (or ``broker keys
re-encrypt``) moves every secret to the first key. The additional authenticated data binds a value to its
owner: a ciphertext copied to another principal's row does not decrypt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from broker.encryption import Cipher, Undecryptable, envelope_key_id, stretch
from broker.errors import ServiceUnavailable
from broker.keys import Keys

UNDECRYPTABLE_MESSAGE = (
    "A stored factor cannot be decrypted with the configured keys. Ask an administrator to run "
    "`broker keys status` and list the missing key again (mfa.encryption_keys or secret_keys)."
)


def _stretch(raw: bytes) -> bytes:
    return stretch(raw, info=b"broker mfa secret")


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


class SecretBox:
    """Seal with the first key, open with any. ``keys`` are ``(label, raw secret bytes)``, newest first."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one key")
        named: list[tuple[str, bytes]] = []
        # Where each fingerprint comes from, for `broker keys status` (never the key itself).
        self.labels: dict[str, str] = {}
        for label, raw in keys:
            key = _stretch(raw)
            kid = fingerprint(key)
            if kid not in self.labels:
                self.labels[kid] = label
                named.append((kid, key))
        self._cipher = Cipher(named)

    @classmethod
    def for_keyring(cls, encryption_keys: Sequence[bytes], keys: Keys) -> SecretBox:
        explicit = [(f"mfa.encryption_keys[{index}]", raw) for index, raw in enumerate(encryption_keys)]
        derived = [(f"secret_keys {kid} (derived)", key) for kid, key in keys.keys("mfa-secrets")]
        return cls(explicit + derived)

    @property
    def current_id(self) -> str:
        return self._cipher.current_id

    def seal(self, plaintext: str, *, context: str) -> str:
        return self._cipher.seal(plaintext.encode(), aad=context.encode())

    def open(self, value: str, *, context: str) -> str:
        """Decrypt; a value under an unknown key or tampered with is a 503 (fail closed), never a guess."""
        try:
            return self._cipher.open(value, aad=context.encode())[1].decode()
        except Undecryptable:
            raise ServiceUnavailable(UNDECRYPTABLE_MESSAGE, reason="mfa.secret_undecryptable") from None

    def can_open(self, value: str, *, context: str) -> bool:
        try:
            self._cipher.open(value, aad=context.encode())
        except Undecryptable:
            return False
        return True

    def key_id(self, value: str) -> str | None:
        return envelope_key_id(value)

    def needs_rotation(self, value: str) -> bool:
        return self._cipher.needs_rotation(value)
