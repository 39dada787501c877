"""Secret references and the secrets themselves: ``env:NAME`` and ``file:/path`` resolution, the root
``secret_key`` or the keyring ``secret_keys``, encryption keys and the database URL (which carries the
database password).

A secret is resolved once, at load, and kept as a :class:`~pydantic.SecretStr` (or, for the database URL, out
of every ``repr``) so that it never reaches a log line or an error message.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

PLACEHOLDER_MARKERS = ("change-me", "changeme", "dev-only", "example", "placeholder")
MIN_SECRET_LENGTH = 32


def resolve_secret(value: Any) -> Any:
    """Resolve ``env:NAME`` and ``file:/path`` references so that secrets never sit in the YAML file."""
    raw = value.get_secret_value() if isinstance(value, SecretStr) else value
    if not isinstance(raw, str):
        return value
    if raw.startswith("env:"):
        name = raw[4:]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(os.environ[name])
    if raw.startswith("file:"):
        path = Path(raw[5:])
        try:
            return SecretStr(path.read_text().strip())
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


Secret = Annotated[SecretStr, Field(description="a secret, or a reference env:NAME / file:/path")]


def secret_text(value: Any) -> str:
    """The plain text of a resolved secret (or of a value that was not one), for checking its shape."""
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


def check_secret_key(value: Any, *, dev: bool) -> Any:
    """The root ``secret_key``: resolved; outside dev mode long enough and not a placeholder."""
    value = resolve_secret(value)
    raw = secret_text(value)
    if not dev:
        if any(marker in raw.lower() for marker in PLACEHOLDER_MARKERS):
            raise ValueError(
                "is a placeholder; outside dev mode set a real secret "
                "(e.g. BROKER_SECRET_KEY from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(48))'`)"
            )
        if len(raw) < MIN_SECRET_LENGTH:
            raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
    return value


class RootKeySetting(BaseModel):
    """One root secret of the keyring (``secret_keys``). Never reuse an id for another value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,16}$")
    value: Secret

    @field_validator("value", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)


def check_secret_keys(value: list[RootKeySetting], *, dev: bool) -> list[RootKeySetting]:
    """The keyring ``secret_keys``: distinct ids, and each key checked like ``secret_key``."""
    ids = [key.id for key in value]
    if len(set(ids)) != len(ids):
        raise ValueError("every key needs its own id")
    for key in value:
        try:
            check_secret_key(key.value, dev=dev)
        except ValueError as exc:
            raise ValueError(f"key {key.id}: {exc}") from None
    return value


def check_encryption_keys(value: Any) -> Any:
    """A list of keys, each resolved and at least :data:`MIN_SECRET_LENGTH` characters long."""
    if not isinstance(value, list):
        return value
    resolved = [resolve_secret(item) for item in value]
    for item in resolved:
        if len(secret_text(item)) < MIN_SECRET_LENGTH:
            raise ValueError(f"each key must be at least {MIN_SECRET_LENGTH} characters")
    return resolved


def resolve_database_url(value: Any) -> Any:
    """``database_url`` as a plain URL: a literal one, or the value of ``env:NAME`` / ``file:/path``.

    The URL stays a string (the database layer needs one), so the field holding it is kept out of ``repr``;
    show it with :func:`display_database_url` only.
    """
    resolved = resolve_secret(value)
    return secret_text(resolved) if isinstance(resolved, SecretStr) else resolved


def display_database_url(url: str) -> str:
    """The URL with its password replaced by ``***``: what an error message or a banner may show."""
    parts = urlsplit(url)
    credentials, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
