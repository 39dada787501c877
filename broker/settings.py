"""Typed configuration: one YAML file, environment overrides, validated at start-up.

``load_settings(path)`` reads the YAML file, lets ``BROKER_*`` environment variables override it (nested keys
with ``__``, e.g. ``BROKER_AWS__REGION``; ``BROKER_DATABASE_URL`` and ``BROKER_SECRET_KEY`` at the top level),
resolves secret references (``env:NAME`` or ``file:/path``) and validates everything in one pass, so a bad
file yields every problem at once as a :class:`~broker.errors.ConfigError`, each with its YAML path.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from broker.errors import ConfigError
from broker.identity import MfaLevel

# STS AssumeRole accepts 900..43200 seconds (AssumeRole API reference, DurationSeconds).
STS_MIN_DURATION = 900
STS_MAX_DURATION = 43200
PLACEHOLDER_MARKERS = ("change-me", "changeme", "dev-only", "example", "placeholder")
MIN_SECRET_LENGTH = 32

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")


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


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not silently weaken policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class SessionSettings(Strict):
    cookie_name: str = "broker_session"
    # Secure cookies need HTTPS; only plain-HTTP local development turns this off.
    cookie_secure: bool = True
    idle_timeout_minutes: int = Field(30, ge=1, le=24 * 60)
    absolute_timeout_hours: int = Field(12, ge=1, le=7 * 24)


class AwsSettings(Strict):
    region: str = "us-east-1"
    # Set to the STS emulator in development and tests; None means AWS's regional endpoint.
    sts_endpoint_url: str | None = None
    # AWS's console federation endpoint. AWS offers no emulator for it; tests point this at a stand-in.
    federation_endpoint: str | None = "https://signin.aws.amazon.com/federation"
    console_destination: str = "https://console.aws.amazon.com/"
    # True when the broker itself runs on role credentials: STS then caps sessions at one hour.
    role_chaining: bool = False
    connect_timeout_seconds: float = Field(2.0, gt=0, le=30)
    read_timeout_seconds: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(3, ge=1, le=10)


class LocalAccount(Strict):
    """A break-glass account: argon2id password hash plus a TOTP secret, for when the IdP is down."""

    username: str = Field(pattern=r"^[A-Za-z0-9._@+-]{1,64}$")
    password_hash: SecretStr
    totp_secret: Secret
    email: str | None = None
    groups: list[str] = []

    @field_validator("password_hash", mode="before")
    @classmethod
    def _argon2id(cls, value: Any) -> Any:
        value = resolve_secret(value)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not raw.startswith("$argon2id$"):
            raise ValueError("must be an argon2id hash; make one with `broker hash-password`")
        return value

    @field_validator("totp_secret", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)


class LocalStoreConfig(Strict):
    type: Literal["local"] = "local"
    name: str = Field(pattern=_NAME.pattern)
    display_name: str = "Break-glass account"
    accounts: list[LocalAccount] = []


class MfaMapping(Strict):
    """Which IdP-asserted values (OIDC ``amr``/``acr``, SAML ``AuthnContextClassRef``) count as which level."""

    mfa: list[str] = []
    phishing_resistant: list[str] = []


class OidcStoreConfig(Strict):
    """An OpenID Connect identity provider (owned by ``broker.connectors.oidc``)."""

    type: Literal["oidc"]
    name: str = Field(pattern=_NAME.pattern)
    display_name: str = "Company sign-in"
    issuer: str
    client_id: str
    client_secret: Secret | None = None


class SamlStoreConfig(Strict):
    """A SAML 2.0 identity provider (owned by ``broker.connectors.saml``)."""

    type: Literal["saml"]
    name: str = Field(pattern=_NAME.pattern)
    display_name: str = "Company sign-in (SAML)"


IdentityStoreConfig = Annotated[LocalStoreConfig | OidcStoreConfig | SamlStoreConfig, Field(discriminator="type")]


class GrantRule(Strict):
    """One way to be granted a role. Conditions within a rule must all hold; any rule may grant."""

    stores: list[str] = []
    groups: list[str] = []
    subjects: list[str] = []
    emails: list[str] = []
    claims: dict[str, list[str]] = {}
    # A rule with no condition would grant everybody; that must be said explicitly.
    everyone: bool = False

    @model_validator(mode="after")
    def _not_empty(self) -> GrantRule:
        has_condition = bool(self.stores or self.groups or self.subjects or self.emails or self.claims)
        if not has_condition and not self.everyone:
            raise ValueError(
                "a grant rule needs a condition (groups, subjects, emails, claims or stores); "
                "set `everyone: true` to grant every signed-in user"
            )
        return self


def _is_admin_statement(statement: Any) -> bool:
    if not isinstance(statement, dict) or statement.get("Effect") != "Allow":
        return False

    def has_star(key: str) -> bool:
        value = statement.get(key)
        values = value if isinstance(value, list) else [value]
        return "*" in values

    return has_star("Action") and has_star("Resource")


class RoleConfig(Strict):
    name: str = Field(pattern=_NAME.pattern)
    description: str = ""
    role_arn: str
    account_name: str | None = None
    grant: list[GrantRule] = Field(min_length=1)
    mfa: MfaLevel = MfaLevel.MFA
    max_duration_seconds: int = Field(3600, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    default_duration_seconds: int | None = Field(None, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    session_policy: dict[str, Any] | None = None
    policy_arns: list[str] = Field([], max_length=10)
    allow_admin: bool = False
    session_tags: dict[str, str] = {}
    transitive_tags: list[str] = []
    source_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []

    @field_validator("mfa", mode="before")
    @classmethod
    def _mfa(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return MfaLevel.parse(value)
            except KeyError:
                raise ValueError("must be one of none, mfa, phishing_resistant") from None
        return value

    @field_validator("role_arn")
    @classmethod
    def _arn(cls, value: str) -> str:
        if not _ROLE_ARN.match(value):
            raise ValueError("must be an IAM role ARN such as arn:aws:iam::123456789012:role/Name")
        return value

    @field_validator("policy_arns")
    @classmethod
    def _policy_arns(cls, value: list[str], info: ValidationInfo) -> list[str]:
        for arn in value:
            if not _POLICY_ARN.match(arn):
                raise ValueError(f"{arn!r} is not an IAM policy ARN")
        return value

    @field_validator("session_tags")
    @classmethod
    def _tags(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 50:
            raise ValueError("STS accepts at most 50 session tags")
        for key in value:
            if not _TAG_KEY.match(key) or key.lower().startswith("aws:"):
                raise ValueError(f"{key!r} is not a valid session tag key")
        return value

    @property
    def account(self) -> str:
        match = _ROLE_ARN.match(self.role_arn)
        assert match is not None
        return match.group(1)

    @model_validator(mode="after")
    def _cross_checks(self) -> RoleConfig:
        problems = []
        if self.default_duration_seconds and self.default_duration_seconds > self.max_duration_seconds:
            problems.append("default_duration_seconds exceeds max_duration_seconds")
        unknown = set(self.transitive_tags) - set(self.session_tags)
        if unknown:
            problems.append(f"transitive_tags names tags that are not in session_tags: {sorted(unknown)}")
        statements = (self.session_policy or {}).get("Statement", [])
        statements = statements if isinstance(statements, list) else [statements]
        admin = any(_is_admin_statement(s) for s in statements) or any(
            arn.endswith(":policy/AdministratorAccess") for arn in self.policy_arns
        )
        if admin and not self.allow_admin:
            problems.append(
                'the session policy allows "*" actions on "*" resources; '
                "set `allow_admin: true` if this role really is an administrator role"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


class Settings(BaseSettings):
    """The whole broker configuration. Build it with :func:`load_settings`; pass it to ``create_app``."""

    model_config = SettingsConfigDict(env_prefix="BROKER_", env_nested_delimiter="__", extra="forbid", frozen=True)

    mode: Literal["production", "dev"] = "production"
    public_url: str = "http://127.0.0.1:8000"
    database_url: str = "sqlite:///var/broker.db"
    # Root secret from which the audit-chain, value-HMAC, session and CSRF keys are derived.
    secret_key: Secret
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True
    session: SessionSettings = SessionSettings()
    aws: AwsSettings = AwsSettings()
    identity_stores: list[IdentityStoreConfig] = []
    roles: list[RoleConfig] = []

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
        value = resolve_secret(value)
        raw = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if info.data.get("mode") != "dev":
            if any(marker in raw.lower() for marker in PLACEHOLDER_MARKERS):
                raise ValueError(
                    "is a placeholder; outside dev mode set a real secret "
                    "(e.g. BROKER_SECRET_KEY from `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(48))'`)"
                )
            if len(raw) < MIN_SECRET_LENGTH:
                raise ValueError(f"must be at least {MIN_SECRET_LENGTH} characters")
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/?#]+(/[^?#]*)?$", value):
            raise ValueError("must be an absolute http(s) URL without query, e.g. https://broker.example.com")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _references(self) -> Settings:
        problems = []
        store_names = [s.name for s in self.identity_stores]
        if len(set(store_names)) != len(store_names):
            problems.append("identity_stores: names must be unique")
        role_names = [r.name for r in self.roles]
        if len(set(role_names)) != len(role_names):
            problems.append("roles: names must be unique")
        for index, role in enumerate(self.roles):
            for rule in role.grant:
                for store in rule.stores:
                    if store not in store_names:
                        problems.append(f"roles[{index}].grant: unknown identity store {store!r}")
        if self.mode != "dev" and not self.public_url.startswith("https://") and self.session.cookie_secure:
            problems.append("public_url must be https:// when session.cookie_secure is true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
        elif part.startswith("function-") or part in {"local", "oidc", "saml", "json-or-python"}:
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
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            problems.append((_yaml_path(err["loc"]), msg))
        raise ConfigError(problems) from None
