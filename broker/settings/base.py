"""What every configuration section shares: the strict base model, name and URL patterns, MFA level parsing,
e-mail domain normalisation and the limits STS puts on session durations."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict

from broker.identity import MfaLevel

# STS AssumeRole accepts 900..43200 seconds (AssumeRole API reference, DurationSeconds).
STS_MIN_DURATION = 900
STS_MAX_DURATION = 43200

# Names of identity stores, roles, workload issuers and SCIM clients: they appear in URLs and audit events.
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# Plain http is acceptable only on a loopback address (development and tests).
LOOPBACK_HTTP = re.compile(r"^http://(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(/|$)")
_DOMAIN = re.compile(r"^(\*\.)?([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


class Strict(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not silently weaken policy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_mfa(value: Any) -> Any:
    """``none`` / ``mfa`` / ``phishing_resistant`` as an :class:`~broker.identity.MfaLevel`."""
    if isinstance(value, str):
        try:
            return MfaLevel.parse(value)
        except KeyError:
            raise ValueError("must be one of none, mfa, phishing_resistant") from None
    return value


def https_or_loopback(value: str) -> str:
    if not (value.startswith("https://") or LOOPBACK_HTTP.match(value)) or "#" in value:
        raise ValueError("must be an https:// URL (plain http only on loopback)")
    return value


def email_domains(value: list[str]) -> list[str]:
    """E-mail domains a store owns, lower-cased and in ASCII (IDNA); ``*.example.com`` means any subdomain."""
    normalized = []
    for domain in value:
        wildcard = domain.startswith("*.")
        bare = domain[2:] if wildcard else domain
        try:
            ascii_name = bare.strip().rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"{domain!r} is not a domain name") from None
        name = ("*." if wildcard else "") + ascii_name
        if not _DOMAIN.match(name):
            raise ValueError(f"{domain!r} is not a domain name such as example.com or *.example.com")
        normalized.append(name)
    return normalized
