"""Where the helper keeps its files (XDG base directories), all created private to the user.

``os.path`` rather than ``pathlib``, ``zlib.crc32`` rather than ``hashlib``, no ``re``: this module is on the
credential-process cache-hit path, where every import is paid on each AWS CLI call.
"""

from __future__ import annotations

import os
import zlib

_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def config_dir() -> str:
    base = os.environ.get("BROKER_CLIENT_HOME")
    if base:
        return os.path.join(base, "config")
    root = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(root, "identity-broker")


def cache_dir() -> str:
    base = os.environ.get("BROKER_CLIENT_HOME")
    if base:
        return os.path.join(base, "cache")
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "identity-broker")


def private_dir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def write_private(path: str, data: bytes) -> None:
    """Write a file readable only by the user, atomically (never a moment with wider permissions)."""
    private_dir(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def cache_file(url: str, role: str, duration: int | None) -> str:
    # The name only has to be stable; the ciphertext is bound to (url, role, duration), so a collision is a miss.
    safe_role = "".join(c if c in _SAFE else "_" for c in role[:64])
    return os.path.join(cache_dir(), f"{safe_role}-{duration or 0}-{zlib.crc32(url.encode()):08x}.cred")
