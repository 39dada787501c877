"""The keyring of root secrets, the keys derived from them per purpose, and keyed HMACs of secret values.

Each purpose gets its own key (HMAC-SHA256 of the purpose label under a root secret), so an HMAC of a session
id can never be confused with an audit-chain hash or a CSRF token.

Several root secrets can be configured at once (``secret_keys``), each with a short id, newest first: new
values are written under the newest, values written under any listed key are still read. Where a key was
used, its id is recorded (audit events and segments, encrypted signing keys); HMAC lookups try every listed
key (:meth:`Keys.macs`). A plain ``secret_key`` is a keyring of one key whose id is ``k0``
(:data:`DEFAULT_KEY_ID`), so the same secret listed later as ``{id: k0, value: ...}`` reads everything it
wrote. docs/operations.md, "Rotating secret_key", is the procedure.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from pydantic import SecretStr

DEFAULT_KEY_ID = "k0"

RootKeys = Sequence[tuple[str, SecretStr]]


class UnknownKey(LookupError):
    """A value names a root key id that is not configured."""


class Keys:
    def __init__(self, root: SecretStr | RootKeys) -> None:
        ring = [(DEFAULT_KEY_ID, root)] if isinstance(root, SecretStr) else list(root)
        if not ring:
            raise ValueError("the keyring needs at least one key")
        ids = [kid for kid, _ in ring]
        if len(set(ids)) != len(ids):
            raise ValueError("key ids must be unique")
        self._roots = {kid: secret.get_secret_value().encode() for kid, secret in ring}
        self.ids: tuple[str, ...] = tuple(ids)
        self.current_id = ids[0]
        # Derived once per key and purpose: hot paths MAC a value per request (a jti, a session id, a rate key).
        self._derived: dict[tuple[str, str], bytes] = {}

    def key(self, purpose: str, key_id: str | None = None) -> bytes:
        """The key for ``purpose`` derived from root ``key_id`` (the newest when None)."""
        kid = key_id or self.current_id
        derived = self._derived.get((kid, purpose))
        if derived is None:
            root = self._roots.get(kid)
            if root is None:
                raise UnknownKey(kid)
            derived = hmac.new(root, b"broker-key:" + purpose.encode(), hashlib.sha256).digest()
            self._derived[(kid, purpose)] = derived
        return derived

    def keys(self, purpose: str) -> list[tuple[str, bytes]]:
        """``(key id, derived key)`` for every listed root, newest first."""
        return [(kid, self.key(purpose, kid)) for kid in self.ids]

    def mac(self, purpose: str, value: str | bytes, key_id: str | None = None) -> str:
        """Hex HMAC-SHA256 of ``value`` under the key for ``purpose`` (the newest root unless ``key_id``)."""
        data = value.encode() if isinstance(value, str) else value
        return hmac.new(self.key(purpose, key_id), data, hashlib.sha256).hexdigest()

    def macs(self, purpose: str, value: str | bytes) -> list[str]:
        """The HMAC under every listed root, newest first: what a lookup of a stored HMAC must try."""
        return [self.mac(purpose, value, kid) for kid in self.ids]

    def verify(self, purpose: str, value: str | bytes, expected: str) -> bool:
        """True if ``expected`` is the HMAC of ``value`` under any listed root."""
        found = False
        for candidate in self.macs(purpose, value):
            found |= hmac.compare_digest(candidate, expected)
        return found
