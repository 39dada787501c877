"""Single-use recovery codes: shown once, stored as keyed HMACs.

Each code carries 60 random bits (12 base32 characters), far beyond online guessing under the lockout, so a
keyed HMAC (the key derived from the broker's root secret) protects them at rest as well as a slow hash
would, without argon2's cost on every attempt. Spaces, dashes and case are ignored when a code is typed.
"""

from __future__ import annotations

import secrets

_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: codes are read off paper


def generate(count: int) -> list[str]:
    return ["-".join("".join(secrets.choice(_ALPHABET) for _ in range(4)) for _ in range(3)) for _ in range(count)]


def normalize(code: str) -> str | None:
    """The canonical form of a typed code, or None if it cannot be one (checked before any lookup)."""
    cleaned = "".join(code.lower().split()).replace("-", "")
    if len(cleaned) != 12 or any(c not in _ALPHABET for c in cleaned):
        return None
    return cleaned
