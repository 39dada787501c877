"""Configuration pieces tests share: the break-glass (local) identity store and its accounts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def break_glass_account(
    username: str,
    *,
    password_hash: str,
    totp_secret: str,
    groups: Sequence[str] = ("engineering",),
    email: str | None = None,
) -> dict[str, Any]:
    """One local account; its e-mail is ``<username>@example.com`` unless given."""
    return {
        "username": username,
        "password_hash": password_hash,
        "totp_secret": totp_secret,
        "email": email or f"{username}@example.com",
        "groups": list(groups),
    }


def break_glass_store(*accounts: dict[str, Any], name: str = "breakglass") -> dict[str, Any]:
    """The local identity store (``type: local``) holding ``accounts``."""
    return {"type": "local", "name": name, "accounts": list(accounts)}
