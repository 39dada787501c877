"""Symmetric encryption at rest: AES-256-GCM (NIST SP 800-38D) under a list of named keys, newest first.

The one owner of the AEAD primitive for the broker (``broker.client`` is a separate program). A value is
sealed under the newest key into an envelope that names its key, ``v1.<key id>.<base64url(nonce ||
ciphertext)>``, so decryption picks the key directly and an older key keeps working until the value has
been re-encrypted (``needs_rotation``). The additional authenticated data binds a value to where it is
stored (its owner, its kid): a ciphertext copied elsewhere does not decrypt. A caller may instead store the
bare body and the key id in a column beside it (``seal_body``); a bare body is opened with that recorded id,
or, for values stored before key ids, by trying every key.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = "v1"
_NONCE_BYTES = 12  # AES-GCM's standard 96-bit nonce (NIST SP 800-38D section 8.2), random per value.


class Undecryptable(Exception):
    """No configured key opens the value (its key is not listed, or it was tampered with)."""

    def __init__(self, key_id: str | None) -> None:
        super().__init__(key_id)
        self.key_id = key_id


def stretch(raw: bytes, *, info: bytes) -> bytes:
    """A 256-bit AES key from a configured secret string's bytes: HKDF-SHA256 (RFC 5869), no salt, bound to
    its use by ``info``."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(raw)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def envelope_key_id(value: str) -> str | None:
    """The key id an envelope names; None for a value stored before envelopes."""
    parts = value.split(".", 2)
    return parts[1] if len(parts) == 3 and parts[0] == _VERSION else None


class Cipher:
    """Encrypt under the first key, decrypt under any. ``keys`` are ``(id, 32-byte key)``, newest first."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise ValueError("at least one key")
        self._aeads: dict[str, AESGCM] = {}
        for kid, key in keys:
            if "." in kid:
                raise ValueError("a key id cannot contain a dot")
            self._aeads.setdefault(kid, AESGCM(key))
        self.current_id = keys[0][0]
        self.ids = tuple(self._aeads)

    def seal(self, plaintext: bytes, *, aad: bytes) -> str:
        """An envelope naming the newest key."""
        kid, body = self.seal_body(plaintext, aad=aad)
        return f"{_VERSION}.{kid}.{body}"

    def seal_body(self, plaintext: bytes, *, aad: bytes) -> tuple[str, str]:
        """``(key id, bare body)`` for a caller that records the key id in a column of its own, so that a
        release which predates key ids still reads the body while the key is unchanged."""
        nonce = os.urandom(_NONCE_BYTES)
        return self.current_id, b64(nonce + self._aeads[self.current_id].encrypt(nonce, plaintext, aad))

    def open(self, value: str, *, aad: bytes, key_id: str | None = None) -> tuple[str, bytes]:
        """``(id of the key that opened it, plaintext)``; :class:`Undecryptable` if no listed key does.

        ``key_id`` is the id recorded beside a bare (pre-envelope) value, if any; without one every key is tried.
        """
        named = envelope_key_id(value)
        if named is not None:
            candidates, body = [named], value.split(".", 2)[2]
        else:
            candidates, body = ([key_id] if key_id else list(self._aeads)), value
        try:
            data = unb64(body)
        except ValueError:
            raise Undecryptable(named or key_id) from None
        for kid in candidates:
            aead = self._aeads.get(kid)
            if aead is None:
                continue
            try:
                return kid, aead.decrypt(data[:_NONCE_BYTES], data[_NONCE_BYTES:], aad)
            except (InvalidTag, ValueError):
                continue
        raise Undecryptable(named or key_id)

    def needs_rotation(self, value: str) -> bool:
        """True when the value is not under the newest key (re-encrypt it)."""
        return envelope_key_id(value) != self.current_id
