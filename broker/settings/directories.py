"""LDAP directories as identity stores (owned by :mod:`broker.connectors.ldap`) and home realm discovery,
which sends a person to the store that lists their e-mail domain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from broker.settings.base import NAME, Strict, email_domains
from broker.settings.secrets import Secret, resolve_secret

_LDAP_ATTRIBUTE = r"^[A-Za-z][A-Za-z0-9-]{0,63}$"


class LdapAttributes(Strict):
    """Which directory attributes carry what (Active Directory: ``sAMAccountName``, ``objectGUID``)."""

    username: str = Field("uid", pattern=_LDAP_ATTRIBUTE)
    email: str | None = Field("mail", pattern=_LDAP_ATTRIBUTE)
    # A value that never changes (renames and moves change the DN): entryUUID (RFC 4530), AD's objectGUID.
    subject: str = Field("entryUUID", pattern=_LDAP_ATTRIBUTE)
    # Copied into Identity.attributes (first value, as text), for `claims:` grant rules.
    extra: list[str] = []

    @field_validator("extra")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_LDAP_ATTRIBUTE, name):
                raise ValueError(f"{name!r} is not an attribute name")
        return value


class LdapGroups(Strict):
    """Where a person's groups come from: the ``memberOf`` attribute, a search of group entries, or nowhere.

    Each group's name is the value of ``name_attribute`` (for ``member_of``: of the group DN's first RDN).
    """

    source: Literal["member_of", "search", "none"] = "member_of"
    member_of_attribute: str = Field("memberOf", pattern=_LDAP_ATTRIBUTE)
    base_dn: str | None = None
    # ANDed with (member_attribute=<the person's DN>).
    filter: str = "(objectClass=groupOfNames)"
    # May name an extensible-match rule, e.g. AD's LDAP_MATCHING_RULE_IN_CHAIN "member:1.2.840.113556.1.4.1941:".
    member_attribute: str = Field("member", pattern=r"^[A-Za-z][A-Za-z0-9-]{0,63}(:[0-9]+(\.[0-9]+)*:)?$")
    name_attribute: str = Field("cn", pattern=_LDAP_ATTRIBUTE)
    # Follow groups that are members of groups, up to max_depth levels (cycles are cut).
    nested: bool = False
    max_depth: int = Field(5, ge=1, le=20)
    # A person in more groups than this is refused (a runaway nesting or a hostile directory).
    max_groups: int = Field(500, ge=1, le=10000)

    @model_validator(mode="after")
    def _base(self) -> LdapGroups:
        if self.source == "search" and not self.base_dn:
            raise ValueError("source search needs base_dn (where the group entries are)")
        if not (self.filter.startswith("(") and self.filter.endswith(")")):
            raise ValueError("filter must be an LDAP filter in parentheses, e.g. (objectClass=groupOfNames)")
        return self


class LdapStoreConfig(Strict):
    """An LDAP directory (OpenLDAP, Active Directory, 389 DS, FreeIPA), owned by ``broker.connectors.ldap``.

    The broker binds with a service account, finds the person with an escaped filter, then binds as the
    person with the password they typed. A directory proves only a password: roles that need MFA get it from
    the broker's own factors (TOTP, WebAuthn).
    """

    type: Literal["ldap"]
    name: str = Field(pattern=NAME.pattern)
    display_name: str = "Company directory"
    # ldaps://host:636, or ldap://host:389 with start_tls. Plain ldap:// only in dev mode.
    url: str
    start_tls: bool = False
    # PEM bundle of the CA(s) that issued the directory's certificate; None: the system's trust store.
    # Verification is always on (hostname and chain); there is no switch to turn it off.
    ca_file: Path | None = None
    bind_dn: str = Field(min_length=3)
    bind_password: Secret
    user_base_dn: str = Field(min_length=3)
    user_filter: str = "(objectClass=person)"
    # What a person may type to sign in: matched against each of these attributes (ORed), value escaped.
    login_attributes: list[str] = Field(["uid"], min_length=1, max_length=4)
    attributes: LdapAttributes = LdapAttributes()
    groups: LdapGroups = LdapGroups()
    # Bounds on every wait: TCP and TLS connect, then each operation's answer. A dead or slow directory
    # costs a sign-in at most connect + a few operations' timeouts, never a hung worker.
    connect_timeout_seconds: float = Field(3.0, gt=0, le=30)
    timeout_seconds: float = Field(5.0, gt=0, le=60)
    # Home realm discovery: e-mail domains whose people sign in here.
    domains: list[str] = []

    @field_validator("bind_password", mode="before")
    @classmethod
    def _resolve(cls, value: Any) -> Any:
        return resolve_secret(value)

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return email_domains(value)

    @field_validator("login_attributes")
    @classmethod
    def _login_attributes(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.match(_LDAP_ATTRIBUTE, name):
                raise ValueError(f"{name!r} is not an attribute name such as uid, sAMAccountName or mail")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^ldaps?://[^/?#\s]+/?$", value):
            raise ValueError("must be ldaps://host[:port] (or ldap://host[:port] with start_tls)")
        return value.rstrip("/")

    @field_validator("ca_file")
    @classmethod
    def _ca_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} does not exist")
        return value

    @field_validator("user_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("must be an LDAP filter in parentheses, e.g. (objectClass=person)")
        return value

    @property
    def encrypted(self) -> bool:
        return self.url.startswith("ldaps://") or self.start_tls

    @model_validator(mode="after")
    def _tls(self) -> LdapStoreConfig:
        if self.url.startswith("ldaps://") and self.start_tls:
            raise ValueError("use ldaps:// or start_tls, not both")
        return self


class DiscoverySettings(Strict):
    """Home realm discovery: ``/login`` asks for the e-mail address first and goes straight to the identity
    store that lists its domain (``identity_stores[].domains``), passing the address on as a hint."""

    enabled: bool = False
    # The store for addresses whose domain no store lists; None: such an address gets a message instead.
    fallback_store: str | None = None
