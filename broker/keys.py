"""Keys derived from the one root secret, and keyed HMACs for values that identify a secret.

Each purpose gets its own key (HMAC-SHA256 of the purpose label under the root secret), so an HMAC of a
session id can never be confused with an audit-chain hash or a CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


class Keys:
    def __init__(self, root: SecretStr) -> None:
        self._root = root.get_secret_value().encode()
        # Derived once per purpose: hot paths MAC a value per request (a jti, a session id, a rate-limit key).
        self._derived: dict[str, bytes] = {}

    def key(self, purpose: str) -> bytes:
        derived = self._derived.get(purpose)
        if derived is None:
            derived = hmac.new(self._root, b"broker-key:" + purpose.encode(), hashlib.sha256).digest()
            self._derived[purpose] = derived
        return derived

    def mac(self, purpose: str, value: str | bytes) -> str:
        """Hex HMAC-SHA256 of ``value`` under the key for ``purpose``."""
        data = value.encode() if isinstance(value, str) else value
        return hmac.new(self.key(purpose), data, hashlib.sha256).hexdigest()

    def verify(self, purpose: str, value: str | bytes, expected: str) -> bool:
        return hmac.compare_digest(self.mac(purpose, value), expected)
