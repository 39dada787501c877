"""Where the broker refresh token lives: the OS keyring, or a file readable only by the user.

The file fallback is for machines without a keyring service (servers, containers, CI); set
``BROKER_CLIENT_KEYRING=file`` to choose it explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from broker.client.paths import config_dir, write_private

SERVICE = "identity-broker"


@dataclass
class Profile:
    """What `broker login` remembers about the signed-in session (nothing secret)."""

    url: str
    principal: str = ""
    mfa: str = ""
    session_expires_at: str = ""


def _profile_path() -> str:
    return os.path.join(config_dir(), "profile.json")


def load_profile() -> Profile | None:
    try:
        with open(_profile_path()) as handle:
            return Profile(**json.load(handle))
    except (OSError, ValueError, TypeError):
        return None


def save_profile(profile: Profile) -> None:
    write_private(_profile_path(), json.dumps(asdict(profile)).encode())


def _keyring() -> Any | None:
    if os.environ.get("BROKER_CLIENT_KEYRING") == "file":
        return None
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    if isinstance(keyring.get_keyring(), fail.Keyring):
        return None
    return keyring


def _token_file() -> str:
    return os.path.join(config_dir(), "refresh-tokens.json")


def _read_file() -> dict[str, str]:
    try:
        with open(_token_file()) as handle:
            data: dict[str, str] = json.load(handle)
        return data
    except (OSError, ValueError):
        return {}


def where() -> str:
    return "the OS keyring" if _keyring() is not None else f"{_token_file()} (mode 0600)"


def get_refresh_token(url: str) -> str | None:
    ring = _keyring()
    if ring is not None:
        value: str | None = ring.get_password(SERVICE, url)
        return value
    return _read_file().get(url)


def set_refresh_token(url: str, token: str) -> None:
    ring = _keyring()
    if ring is not None:
        ring.set_password(SERVICE, url, token)
        return
    data = _read_file()
    data[url] = token
    write_private(_token_file(), json.dumps(data).encode())


def delete_refresh_token(url: str) -> None:
    ring = _keyring()
    if ring is not None:
        with contextlib.suppress(Exception):  # already absent is fine
            ring.delete_password(SERVICE, url)
        return
    data = _read_file()
    if data.pop(url, None) is not None:
        write_private(_token_file(), json.dumps(data).encode())
