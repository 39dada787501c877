"""Frozen shared vocabulary: who someone is, how strongly they signed in, what they were granted.

Connectors turn a protocol exchange into an :class:`Identity`; policy reads it; nothing mutates it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class MfaLevel(enum.IntEnum):
    """Strength of authentication, ordered so that ``>=`` means "at least as strong"."""

    NONE = 0
    MFA = 1
    PHISHING_RESISTANT = 2

    @classmethod
    def parse(cls, value: str) -> MfaLevel:
        return cls[value.upper()]

    @property
    def label(self) -> str:
        return self.name.lower()


class Channel(enum.StrEnum):
    """How credentials leave the broker."""

    CONSOLE = "console"
    CLI = "cli"
    SERVICE = "service"


@dataclass(frozen=True)
class Factor:
    """One proof held by this session, with its time: the IdP's sign-in, or a factor completed at the broker.

    ``method`` is ``idp`` for the identity provider's evidence, else the broker factor (``totp``,
    ``webauthn``, ``recovery_code``); ``level`` is what that proof alone is worth.
    """

    method: str
    level: MfaLevel
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "level": self.level.label, "at": self.at.isoformat()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Factor:
        return cls(str(data["method"]), MfaLevel.parse(str(data["level"])), datetime.fromisoformat(data["at"]))


@dataclass(frozen=True)
class MfaEvidence:
    """What the sign-in proved, with when: ``methods`` are RFC 8176 ``amr`` names or broker factors.

    ``level`` is the strongest proof this session holds (the IdP's, raised by broker factors), so every reader
    of ``level`` sees broker factors. ``factors`` lists each proof with its time once a broker factor was
    added (the IdP's evidence first, as method ``idp``); :meth:`level_since` uses them for freshness.
    """

    level: MfaLevel = MfaLevel.NONE
    methods: tuple[str, ...] = ()
    authenticated_at: datetime | None = None
    factors: tuple[Factor, ...] = ()

    def with_factor(self, factor: Factor, amr: str) -> MfaEvidence:
        """This evidence plus one factor completed at the broker (``amr``: its RFC 8176 method name)."""
        factors = self.factors
        if not factors and self.authenticated_at is not None and self.level > MfaLevel.NONE:
            factors = (Factor("idp", self.level, self.authenticated_at),)
        methods = self.methods if amr in self.methods else (*self.methods, amr)
        return MfaEvidence(max(self.level, factor.level), methods, self.authenticated_at, (*factors, factor))

    def level_since(self, since: datetime | None) -> MfaLevel:
        """The strongest level proven at or after ``since`` (``None``: at any time in this session)."""
        if since is None:
            return self.level
        if not self.factors:
            fresh = self.authenticated_at is not None and self.authenticated_at >= since
            return self.level if fresh else MfaLevel.NONE
        return max((f.level for f in self.factors if f.at >= since), default=MfaLevel.NONE)


@dataclass(frozen=True)
class Identity:
    """A verified principal. Only connectors build one, after every protocol check passed."""

    subject: str
    issuer: str
    store: str
    username: str
    email: str | None = None
    groups: frozenset[str] = frozenset()
    attributes: Mapping[str, str] = field(default_factory=dict)
    mfa: MfaEvidence = MfaEvidence()
    break_glass: bool = False

    @property
    def principal(self) -> str:
        """Stable human-readable principal name used for audit and SourceIdentity."""
        return self.email or self.username

    def to_json(self) -> dict[str, Any]:
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "store": self.store,
            "username": self.username,
            "email": self.email,
            "groups": sorted(self.groups),
            "attributes": dict(self.attributes),
            "mfa": {
                "level": self.mfa.level.label,
                "methods": list(self.mfa.methods),
                "authenticated_at": self.mfa.authenticated_at.isoformat() if self.mfa.authenticated_at else None,
                "factors": [f.to_json() for f in self.mfa.factors],
            },
            "break_glass": self.break_glass,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Identity:
        mfa = data.get("mfa") or {}
        at = mfa.get("authenticated_at")
        return cls(
            subject=data["subject"],
            issuer=data["issuer"],
            store=data["store"],
            username=data["username"],
            email=data.get("email"),
            groups=frozenset(data.get("groups") or ()),
            attributes=dict(data.get("attributes") or {}),
            mfa=MfaEvidence(
                level=MfaLevel.parse(mfa.get("level", "none")),
                methods=tuple(mfa.get("methods") or ()),
                authenticated_at=datetime.fromisoformat(at) if at else None,
                factors=tuple(Factor.from_json(f) for f in mfa.get("factors") or ()),
            ),
            break_glass=bool(data.get("break_glass")),
        )


@dataclass(frozen=True)
class Credentials:
    """Short-lived STS credentials. ``repr`` never shows the secret parts."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str = field(repr=False)
    expiration: datetime
    assumed_role_arn: str = ""

    def process_json(self) -> dict[str, Any]:
        """The AWS ``credential_process`` / portal form of these credentials."""
        return {
            "Version": 1,
            "AccessKeyId": self.access_key_id,
            "SecretAccessKey": self.secret_access_key,
            "SessionToken": self.session_token,
            "Expiration": self.expiration.isoformat().replace("+00:00", "Z"),
        }
