"""Where the broker refresh token lives: the OS keyring, or a file readable only by the user.

The file fallback is for machines without a keyring service (servers, containers, CI); set
``BROKER_CLIENT_KEYRING=file`` to choose it explicitly.
"""

from __future__ import annotations

import contextlib
import json
import os
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from broker.client.paths import config_dir, private_dir, write_private

SERVICE = "identity-broker"


@dataclass
class Profile:
    """What `broker login` remembers about the signed-in session (nothing secret)."""

    url: str
    principal: str = ""
    mfa: str = ""
    session_expires_at: str = ""
    # The broker's AWS region, and its AWS endpoint when it names one (dev mode's emulator): `broker exec`
    # passes them to the command it runs.
    aws_region: str = ""
    aws_endpoint_url: str = ""


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


_held: dict[str, int] = {}


@contextlib.contextmanager
def refresh_lock(url: str) -> Iterator[None]:
    """Serialize refresh-token rotation between helper processes on this machine.

    The AWS CLI and SDKs (Terraform with several providers, parallel jobs) may start many
    ``credential-process`` runs at once; two rotating the same refresh token would look like token theft to
    the broker, which then revokes the sign-in (reuse detection). Reentrant within one process.
    """
    if _held.get(url):
        _held[url] += 1
        try:
            yield
        finally:
            _held[url] -= 1
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; concurrent refreshes there may end the sign-in
        fcntl = None  # type: ignore[assignment]
    path = os.path.join(private_dir(config_dir()), f"refresh-{zlib.crc32(url.encode()):08x}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _held[url] = 1
        try:
            yield
        finally:
            _held.pop(url, None)
    finally:
        os.close(fd)  # closing releases the lock


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
