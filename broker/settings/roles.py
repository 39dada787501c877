"""Roles: the AWS roles the broker issues, who may have them (grant rules), how strong their sign-in must be,
and just-in-time access (requests, approvers, allowed hours). Pure data; :mod:`broker.policy` decides."""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from broker.identity import MfaLevel
from broker.settings.base import NAME, STS_MAX_DURATION, STS_MIN_DURATION, Strict, parse_mfa

_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}):role/[\w+=,.@/-]{1,512}$")
_POLICY_ARN = re.compile(r"^arn:aws[a-z-]*:iam::(\d{12}|aws):policy/[\w+=,.@/-]{1,512}$")
_TAG_KEY = re.compile(r"^[\w .:/=+\-@]{1,128}$")


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


# ---------------------------------------------------------------- just-in-time access and allowed hours

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class RequiresRequest(Strict):
    """A role nobody holds standing: eligible people (its grant rules) ask, someone in ``approvers`` approves,
    and the role is usable for the approved window only (``broker.elevation``)."""

    approvers: list[str] = Field(min_length=1)
    # The longest window one approval may open; a request asking for more is capped to this.
    max_duration_seconds: int = Field(4 * 3600, ge=STS_MIN_DURATION, le=7 * 24 * 3600)
    # A request nobody answers within this expires (and its requester is told).
    request_ttl_minutes: int = Field(60, ge=1, le=7 * 24 * 60)


class AllowedHours(Strict):
    """When a role may be issued: ``start_hour`` <= local hour < ``end_hour`` on ``days``, in ``timezone``."""

    timezone: str = "UTC"
    start_hour: int = Field(0, ge=0, le=23)
    end_hour: int = Field(24, ge=1, le=24)
    days: list[Weekday] = list(WEEKDAYS)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Berlin") from None
        return value

    @model_validator(mode="after")
    def _order(self) -> AllowedHours:
        if self.start_hour >= self.end_hour:
            raise ValueError("start_hour must be before end_hour")
        return self


# The identity fields a session tag template may name (``broker.policy.render_template``), besides {attr.NAME}.
TAG_PLACEHOLDERS = ("username", "email", "subject", "store", "issuer")


class RoleConfig(Strict):
    name: str = Field(pattern=NAME.pattern)
    description: str = ""
    role_arn: str
    account_name: str | None = None
    grant: list[GrantRule] = Field(min_length=1)
    mfa: MfaLevel = MfaLevel.MFA
    # Step-up for sensitive roles: the proof of `mfa` must be younger than this (IdP sign-in or broker factor).
    mfa_max_age_minutes: int | None = Field(None, ge=1, le=24 * 60)
    max_duration_seconds: int = Field(3600, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    default_duration_seconds: int | None = Field(None, ge=STS_MIN_DURATION, le=STS_MAX_DURATION)
    session_policy: dict[str, Any] | None = None
    policy_arns: list[str] = Field([], max_length=10)
    allow_admin: bool = False
    session_tags: dict[str, str] = {}
    transitive_tags: list[str] = []
    source_cidrs: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    # Just-in-time: the grant rules say who may *ask*; only an approved request makes the role usable.
    requires_request: RequiresRequest | None = None
    allowed_hours: AllowedHours | None = None

    @field_validator("mfa", mode="before")
    @classmethod
    def _mfa(cls, value: Any) -> Any:
        return parse_mfa(value)

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
        for key, template in value.items():
            if not _TAG_KEY.match(key) or key.lower().startswith("aws:"):
                raise ValueError(f"{key!r} is not a valid session tag key")
            for name in re.findall(r"\{([^{}]*)\}", template):
                if name not in TAG_PLACEHOLDERS and not re.fullmatch(r"attr\.[A-Za-z0-9_:-]+", name):
                    raise ValueError(
                        f"session tag {key!r}: unknown placeholder {{{name}}}; use one of "
                        + ", ".join(f"{{{p}}}" for p in TAG_PLACEHOLDERS)
                        + " or {attr.NAME}"
                    )
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


# ---------------------------------------------------------------- service-to-service token exchange (RFC 8693)

# Asymmetric JWS algorithms a workload issuer may use (RFC 7518 section 3.1). HS* is excluded: with a JWKS of
