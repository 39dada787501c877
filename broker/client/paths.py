"""Where the helper keeps its files (XDG base directories), all created private to the user."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def config_dir() -> Path:
    base = os.environ.get("BROKER_CLIENT_HOME")
    if base:
        return Path(base) / "config"
    return Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "identity-broker"


def cache_dir() -> Path:
    base = os.environ.get("BROKER_CLIENT_HOME")
    if base:
        return Path(base) / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "identity-broker"


def private_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Write a file readable only by the user, atomically (never a moment with wider permissions)."""
    private_dir(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def cache_file(url: str, role: str, duration: int | None) -> Path:
    key = hashlib.sha256(f"{url}\n{role}\n{duration or ''}".encode()).hexdigest()[:32]
    return cache_dir() / f"{key}.cred"
