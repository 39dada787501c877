"""The real LDAP peer: Debian's slapd with a throwaway configuration and data, plain, StartTLS and LDAPS.

One slapd per test module serves ``ldap://`` (plain and StartTLS) and ``ldaps://`` on free 127.0.0.1 ports,
with a certificate for 127.0.0.1 issued by a CA made here with ``cryptography``. A second CA that issued
nothing stands in for "a certificate that does not verify". The directory holds:

- ``ou=people``: alice (engineering, admins), bob (platform, which is nested in engineering), two people
  sharing one address (ambiguous), and one whose employeeType holds a NUL;
- ``ou=contractors``: carol, outside the base DN the broker searches;
- ``ou=groups``: platform, engineering (members: alice, the platform group), admins;
- ``ou=services``: the broker's service account, the only one (besides each person) allowed to read.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from broker.dev_directory import Slapd, TlsFiles
from tests.support.certificates import make_ca, server_identity

SUFFIX = "dc=example,dc=com"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
SERVICE_DN = f"cn=broker,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-account-password-0123456789"
ROOT_PASSWORD = "directory-manager-password"
PASSWORDS = {
    "alice": "alice-password-1",
    "bob": "bob-password-2",
    "carol": "carol-password-3",
    "dave": "dave-password-4",
    "erin": "erin-password-5",
    "nul": "nul-password-6",
}

ACL = f"""access to attrs=userPassword
  by dn.exact="{SERVICE_DN}" none
  by anonymous auth
  by * none
access to *
  by dn.exact="{SERVICE_DN}" read
  by self read
  by anonymous auth
  by * none"""


def _person(uid: str, ou: str, mail: str, extra: str = "") -> str:
    return f"""dn: uid={uid},ou={ou},{SUFFIX}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()} Example
sn: Example
mail: {mail}
userPassword: {PASSWORDS[uid]}
{extra}"""


def directory_ldif() -> str:
    s = SUFFIX
    parts = [
        f"dn: {s}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n",
        *(f"dn: ou={ou},{s}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ("people", "groups", "services")),
        f"dn: ou=contractors,{s}\nobjectClass: organizationalUnit\nou: contractors\n",
        f"dn: {SERVICE_DN}\nobjectClass: applicationProcess\nobjectClass: simpleSecurityObject\ncn: broker\n"
        f"userPassword: {SERVICE_PASSWORD}\n",
        _person("alice", "people", "alice@example.com", "departmentNumber: platform-team\nemployeeType: staff\n"),
        _person("bob", "people", "bob@example.com"),
        _person("carol", "contractors", "carol@example.com"),
        _person("dave", "people", "shared@example.com"),
        _person("erin", "people", "shared@example.com"),
        # A hostile or broken entry: a NUL inside an attribute the broker copies (base64 in LDIF: "a\0b").
        _person("nul", "people", "nul@example.com", "employeeType:: YQBi\n"),
        f"dn: cn=platform,{GROUPS}\nobjectClass: groupOfNames\ncn: platform\nmember: uid=bob,{PEOPLE}\n",
        f"dn: cn=engineering,{GROUPS}\nobjectClass: groupOfNames\ncn: engineering\nmember: uid=alice,{PEOPLE}\n"
        f"member: cn=platform,{GROUPS}\n",
        f"dn: cn=admins,{GROUPS}\nobjectClass: groupOfNames\ncn: admins\nmember: uid=alice,{PEOPLE}\n",
    ]
    return "\n".join(parts)


# ---------------------------------------------------------------- certificates


def make_tls(folder: Path) -> tuple[TlsFiles, Path]:
    """A CA and a server certificate for 127.0.0.1 (IP address only); plus another CA's file, which trusts
    nothing the directory presents."""
    ca_file, cert_file, key_file = server_identity(folder)
    other_ca = folder / "unrelated-ca.pem"
    other_ca.write_bytes(make_ca("Unrelated CA").pem)
    return TlsFiles(ca_file=ca_file, cert_file=cert_file, key_file=key_file), other_ca


class DirectoryPeer:
    """A running slapd and what a broker needs to reach it."""

    def __init__(self, slapd: Slapd, other_ca: Path) -> None:
        self.slapd = slapd
        self.other_ca = other_ca

    @property
    def url(self) -> str:
        return self.slapd.url

    @property
    def ldaps_url(self) -> str:
        return self.slapd.ldaps_url

    @property
    def ca_file(self) -> Path:
        assert self.slapd.tls is not None
        return self.slapd.tls.ca_file

    def store(self, name: str = "corp", *, tls: str = "ldaps", **overrides: Any) -> dict[str, Any]:
        """An ``identity_stores`` entry for this directory: ``tls`` is ``ldaps``, ``start_tls`` or ``plain``."""
        config: dict[str, Any] = {
            "type": "ldap",
            "name": name,
            "display_name": "Example directory",
            "url": self.ldaps_url if tls == "ldaps" else self.url,
            "start_tls": tls == "start_tls",
            "ca_file": str(self.ca_file),
            "bind_dn": SERVICE_DN,
            "bind_password": SERVICE_PASSWORD,
            "user_base_dn": PEOPLE,
            "user_filter": "(objectClass=inetOrgPerson)",
            "login_attributes": ["uid", "mail"],
            "attributes": {"extra": ["departmentNumber", "employeeType"]},
            "groups": {"source": "member_of", "nested": True},
            "connect_timeout_seconds": 2,
            "timeout_seconds": 2,
        }
        config.update(overrides)
        return config


@contextlib.contextmanager
def running_directory(folder: Path) -> Iterator[DirectoryPeer]:
    """Start slapd with the test data, plain and with TLS; stop it whatever happens."""
    tls, other_ca = make_tls(folder / "tls")
    slapd = Slapd(folder / "slapd", suffix=SUFFIX, root_password=ROOT_PASSWORD, ldif=directory_ldif(), tls=tls, acl=ACL)
    with slapd:
        yield DirectoryPeer(slapd, other_ca)
