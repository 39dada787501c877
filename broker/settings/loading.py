"""The whole configuration (:class:`Settings`) and :func:`load_settings`, which validates it in one pass.

``load_settings(path)`` reads the YAML file, lets ``BROKER_*`` environment variables override it (nested keys
with ``__``, e.g. ``BROKER_AWS__REGION``; ``BROKER_DATABASE_URL`` and ``BROKER_SECRET_KEY`` at the top level),
resolves secret references (``env:NAME`` or ``file:/path``) and validates everything in one pass, so a bad
file yields every problem at once as a :class:`~broker.errors.ConfigError`, each with its YAML path: pydantic's
field errors and the cross-section checks of :mod:`broker.settings.checks` together.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import ConfigError
from broker.settings.certificates import DeviceSettings
from broker.settings.checks import reference_problems
from broker.settings.directories import DiscoverySettings
from broker.settings.oauth import OAuthSettings
from broker.settings.roles import RoleConfig
from broker.settings.secrets import (
    RootKeySetting,
    Secret,
    check_secret_key,
    check_secret_keys,
    resolve_database_url,
)
from broker.settings.service import (
    AdminSettings,
    AlertSettings,
    AuditSettings,
    AwsSettings,
    MfaSettings,
    NotificationSettings,
    RateLimitSettings,
    ScimSettings,
    ServerSettings,
    SessionSettings,
)
from broker.settings.stores import IdentityStoreConfig


class Settings(BaseSettings):
    """The whole broker configuration. Build it with :func:`load_settings`; pass it to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", env_nested_delimiter="__", extra="forbid", frozen=True)

    mode: Literal["production", "dev"] = "production"
    public_url: str = "http://127.0.0.1:8000"
    # A URL, or env:NAME / file:/path holding one (it carries the database password). Resolved at load and kept
    # out of repr; show it with broker.settings.display_database_url.
    database_url: str = Field("sqlite:///var/broker.db", repr=False)
    # Root secret from which the audit-chain, value-HMAC, session, CSRF and encryption keys are derived: a
    # keyring of one key with id "k0" (broker.keys). To rotate it, list several in secret_keys instead.
    secret_key: Secret | None = None
    # The keyring, newest first: the first key writes, every listed key reads (docs/operations.md, "Rotating
    # secret_key"). Set either this or secret_key.
    secret_keys: list[RootKeySetting] = []
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    session: SessionSettings = SessionSettings()
    aws: AwsSettings = AwsSettings()
    identity_stores: list[IdentityStoreConfig] = []
    roles: list[RoleConfig] = []
    oauth: OAuthSettings = OAuthSettings()
    mfa: MfaSettings = MfaSettings()
    admin: AdminSettings = AdminSettings()
    notifications: NotificationSettings = NotificationSettings()
    alerts: AlertSettings = AlertSettings()
    rate_limits: RateLimitSettings = RateLimitSettings()
    server: ServerSettings = ServerSettings()
    audit: AuditSettings = AuditSettings()
    devices: DeviceSettings = DeviceSettings()
    discovery: DiscoverySettings = DiscoverySettings()
    scim: ScimSettings = ScimSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the YAML file (which arrives as init arguments).
        return env_settings, init_settings, file_secret_settings

    @field_validator("secret_key", mode="before")
    @classmethod
    def _secret(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        return check_secret_key(value, dev=info.data.get("mode") == "dev")

    @field_validator("secret_keys")
    @classmethod
    def _secrets(cls, value: list[RootKeySetting], info: ValidationInfo) -> list[RootKeySetting]:
        return check_secret_keys(value, dev=info.data.get("mode") == "dev")

    @model_validator(mode="after")
    def _one_keyring(self) -> Settings:
        if (self.secret_key is None) == (not self.secret_keys):
            raise ValueError(
                "set secret_key (one key) or secret_keys (a list of {id, value}, newest first), not both or neither"
            )
        return self

    @field_validator("database_url", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        return resolve_database_url(value)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", value):
            raise ValueError("must be an absolute http(s) URL without query, e.g. https://broker.example.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> Settings:
        # A ConfigError passes through pydantic unchanged, so each problem keeps its own YAML path.
        problems = reference_problems(self.model_dump(mode="json"))
        if problems:
            raise ConfigError(problems)
        return self

    @property
    def root_keys(self) -> list[tuple[str, SecretStr]]:
        """The keyring as (id, secret), newest first; a plain secret_key is the one key "k0" (broker.keys)."""
        if self.secret_key is not None:
            return [("k0", self.secret_key)]
        return [(key.id, key.value) for key in self.secret_keys]

    @property
    def dev(self) -> bool:
        return self.mode == "dev"

    def store(self, name: str) -> IdentityStoreConfig | None:
        return next((s for s in self.identity_stores if s.name == name), None)

    def role(self, name: str) -> RoleConfig | None:
        return next((r for r in self.roles if r.name == name), None)


def _yaml_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in {"local", "oidc", "saml", "x509", "ldap", "json-or-python"}:
            continue
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise ConfigError([(str(path), f"cannot read: {exc.strerror}")]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([(str(path), f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise ConfigError([(str(path), "must be a YAML mapping at the top level")])
    return data


def load_settings(path: Path | str | None = None, **overrides: Any) -> Settings:
    """Load, override from the environment, validate; raise ConfigError listing every problem."""
    data = read_yaml(Path(path)) if path else {}
    data.update(overrides)
    try:
        return Settings(**data)
    except ValidationError as exc:
        problems = [(_yaml_path(err["loc"]), err["msg"].removeprefix("Value error, ")) for err in exc.errors()]
        # Field errors stop pydantic before the cross-section checks; run those too, in the same report.
        for key in ("mode", "public_url"):
            if f"BROKER_{key.upper()}" in os.environ:
                data[key] = os.environ[f"BROKER_{key.upper()}"]
        problems += [problem for problem in reference_problems(data) if problem not in problems]
        raise ConfigError(problems) from None
