"""The LDAP connector against Debian's real slapd: sign-in over LDAPS, StartTLS and plain LDAP, groups from
memberOf and from a group search (nested or not), and every refusal with its exact reason.

Peers: slapd (tests/support/slapd.py), a loopback TCP proxy for the slow and the vanished directory.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

from broker.connectors.ldap import LdapConnector, user_search_filter, within
from broker.errors import AuthenticationFailed, BrokerError, ServiceUnavailable
from broker.identity import MfaLevel
from broker.settings import LdapStoreConfig, load_settings
from tests.conftest import SECRET
from tests.support.slapd import GROUPS, PASSWORDS, DirectoryPeer, running_directory
from tests.support.tcp_proxy import TcpProxy


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DirectoryPeer]:
    with running_directory(tmp_path_factory.mktemp("ldap")) as peer:
        yield peer


def connector(peer: DirectoryPeer, **overrides: Any) -> LdapConnector:
    return LdapConnector(LdapStoreConfig(**peer.store(**overrides)))


def refusal(conn: LdapConnector, username: str, password: str) -> BrokerError:
    with pytest.raises(BrokerError) as caught:
        conn.authenticate(username, password)
    return caught.value


# ---------------------------------------------------------------- sign-in


@pytest.mark.parametrize("tls", ["ldaps", "start_tls"])
def test_sign_in_over_verified_tls_gives_identity_with_nested_groups_and_no_mfa(
    directory: DirectoryPeer, tls: str
) -> None:
    identity = connector(directory, tls=tls).authenticate("alice", PASSWORDS["alice"])
    assert identity.username == "alice"
    assert identity.email == "alice@example.com"
    assert identity.store == "corp"
    assert identity.groups == {"engineering", "admins"}
    assert identity.attributes["departmentNumber"] == "platform-team"
    assert identity.attributes["employeeType"] == "staff"
    assert identity.attributes["ldap_dn"] == "uid=alice,ou=people,dc=example,dc=com"
    # entryUUID: stable across renames, and not the DN.
    assert len(identity.subject) == 36 and identity.subject.count("-") == 4
    # A directory proves a password only.
    assert identity.mfa.level == MfaLevel.NONE and identity.mfa.methods == ("pwd",)
    assert not identity.break_glass


def test_mail_is_a_login_attribute_and_names_match_case_insensitively(directory: DirectoryPeer) -> None:
    conn = connector(directory)
    assert conn.authenticate("Alice@Example.com", PASSWORDS["alice"]).username == "alice"
    assert conn.authenticate("ALICE", PASSWORDS["alice"]).username == "alice"


def test_nested_groups_via_memberof_only_when_asked(directory: DirectoryPeer) -> None:
    nested = connector(directory).authenticate("bob", PASSWORDS["bob"])
    assert nested.groups == {"platform", "engineering"}
    flat = connector(directory, groups={"source": "member_of", "nested": False}).authenticate("bob", PASSWORDS["bob"])
    assert flat.groups == {"platform"}


def test_groups_from_a_group_search_nested_and_flat(directory: DirectoryPeer) -> None:
    search = {"source": "search", "base_dn": GROUPS, "filter": "(objectClass=groupOfNames)"}
    nested = connector(directory, groups={**search, "nested": True}).authenticate("bob", PASSWORDS["bob"])
    assert nested.groups == {"platform", "engineering"}
    flat = connector(directory, groups=search).authenticate("bob", PASSWORDS["bob"])
    assert flat.groups == {"platform"}
    none = connector(directory, groups={"source": "none"}).authenticate("bob", PASSWORDS["bob"])
    assert none.groups == frozenset()


def test_nesting_stops_at_max_depth(directory: DirectoryPeer) -> None:
    shallow = connector(directory, groups={"source": "member_of", "nested": True, "max_depth": 1})
    assert shallow.authenticate("bob", PASSWORDS["bob"]).groups == {"platform"}


def test_too_many_groups_is_refused(directory: DirectoryPeer) -> None:
    conn = connector(directory, groups={"source": "member_of", "nested": True, "max_groups": 1})
    assert refusal(conn, "alice", PASSWORDS["alice"]).reason == "ldap.too_many_groups"


def test_plain_ldap_works_in_dev_mode(directory: DirectoryPeer) -> None:
    identity = connector(directory, tls="plain").authenticate("alice", PASSWORDS["alice"])
    assert identity.username == "alice"


# ---------------------------------------------------------------- hostile and broken input


def test_empty_password_is_refused_before_any_traffic(directory: DirectoryPeer) -> None:
    # Nothing listens on this port: a connection attempt would be a 503, not this refusal.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = sock.getsockname()[1]
    conn = connector(directory, tls="plain", url=f"ldap://127.0.0.1:{dead}")
    error = refusal(conn, "alice", "")
    assert isinstance(error, AuthenticationFailed) and error.reason == "ldap.password_empty"
    # The same directory answers a real attempt with "unavailable": the refusal above never tried.
    assert refusal(conn, "alice", "x").reason == "ldap.unavailable"


@pytest.mark.parametrize("username", ["", "   ", "alice\x00", "alice\n", "\u202ealice"])
def test_empty_or_control_character_username_is_refused(directory: DirectoryPeer, username: str) -> None:
    assert refusal(connector(directory), username, PASSWORDS["alice"]).reason == "ldap.username_invalid"


def test_wrong_password(directory: DirectoryPeer) -> None:
    error = refusal(connector(directory), "alice", "not-her-password")
    assert isinstance(error, AuthenticationFailed) and error.reason == "ldap.password_invalid"
    assert error.status == 401


@pytest.mark.parametrize(
    "username",
    [
        "al*",  # unescaped, this wildcard finds exactly alice and her password would work
        "*",
        "alice)(uid=*",
        "*)(|(uid=*",
        "alice\\00",
        "al\\2a",  # an escape sequence typed by the attacker is a literal backslash
        "alice)(objectClass=*",
    ],
)
def test_filter_injection_matches_nothing(directory: DirectoryPeer, username: str) -> None:
    error = refusal(connector(directory), username, PASSWORDS["alice"])
    assert error.reason == "ldap.user_not_found"


def test_filter_escaping_keeps_the_typed_name_a_value() -> None:
    config = LdapStoreConfig(
        type="ldap",
        name="corp",
        url="ldaps://ldap.example.com",
        bind_dn="cn=b,dc=x",
        bind_password="x" * 8,
        user_base_dn="ou=people,dc=x",
        login_attributes=["uid", "mail"],
    )
    assert user_search_filter(config, "a*)(uid=\x00\\") == (
        "(&(objectClass=person)(|(uid=a\\2a\\29\\28uid=\\00\\5c)(mail=a\\2a\\29\\28uid=\\00\\5c)))"
    )


def test_a_directory_value_with_nul_is_refused(directory: DirectoryPeer) -> None:
    assert refusal(connector(directory), "nul", PASSWORDS["nul"]).reason == "ldap.attributes_invalid"
    # Not copied, not refused.
    assert connector(directory, attributes={}).authenticate("nul", PASSWORDS["nul"]).username == "nul"


def test_two_people_with_one_address_are_ambiguous(directory: DirectoryPeer) -> None:
    error = refusal(connector(directory), "shared@example.com", PASSWORDS["dave"])
    assert error.reason == "ldap.user_ambiguous"


def test_a_person_outside_the_base_dn_is_not_found(directory: DirectoryPeer) -> None:
    # carol exists, with this password, in ou=contractors: outside user_base_dn.
    assert refusal(connector(directory), "carol", PASSWORDS["carol"]).reason == "ldap.user_not_found"
    # Searching the whole tree finds her, so the refusal above is the base DN's doing.
    wide = connector(directory, user_base_dn="dc=example,dc=com")
    assert wide.authenticate("carol", PASSWORDS["carol"]).username == "carol"


@pytest.mark.parametrize(
    ("dn", "base", "inside"),
    [
        ("uid=a,ou=people,dc=example,dc=com", "ou=people,dc=example,dc=com", True),
        ("UID=a,OU=People,DC=Example,DC=com", "ou=people,dc=example,dc=com", True),
        ("uid=a,ou=contractors,dc=example,dc=com", "ou=people,dc=example,dc=com", False),
        ("uid=a\\,ou=people\\,dc=example\\,dc=com,ou=evil", "ou=people,dc=example,dc=com", False),
        ("uid=ou=people,dc=example,dc=com", "ou=people,dc=example,dc=com", False),
        ("not a dn", "ou=people,dc=example,dc=com", False),
        ("dc=com", "ou=people,dc=example,dc=com", False),
    ],
)
def test_within_compares_parsed_dns(dn: str, base: str, inside: bool) -> None:
    assert within(dn, base) is inside


def test_wrong_service_password_is_a_503_for_the_administrator(directory: DirectoryPeer) -> None:
    error = refusal(connector(directory, bind_password="wrong-service-password"), "alice", PASSWORDS["alice"])
    assert isinstance(error, ServiceUnavailable) and error.reason == "ldap.service_bind_failed"
    assert error.retry_after == 30


# ---------------------------------------------------------------- TLS that does not verify


@pytest.mark.parametrize("tls", ["ldaps", "start_tls"])
def test_a_certificate_from_another_ca_is_refused(directory: DirectoryPeer, tls: str) -> None:
    conn = connector(directory, tls=tls, ca_file=str(directory.other_ca))
    error = refusal(conn, "alice", PASSWORDS["alice"])
    assert isinstance(error, ServiceUnavailable) and error.reason == "ldap.tls_failed"
    assert error.status == 503 and error.retry_after == 30


def test_a_certificate_for_another_host_name_is_refused(directory: DirectoryPeer) -> None:
    # The certificate names 127.0.0.1 only; "localhost" reaches the same server under a name it does not carry.
    url = directory.ldaps_url.replace("127.0.0.1", "localhost")
    error = refusal(connector(directory, url=url), "alice", PASSWORDS["alice"])
    assert error.reason == "ldap.tls_failed"


def test_the_system_trust_store_does_not_trust_a_private_ca(directory: DirectoryPeer) -> None:
    error = refusal(connector(directory, ca_file=None), "alice", PASSWORDS["alice"])
    assert error.reason == "ldap.tls_failed"


# ---------------------------------------------------------------- down or slow


def test_a_directory_that_is_down_fails_fast_with_retry_after(directory: DirectoryPeer) -> None:
    with TcpProxy(directory.slapd.tls_port or 0) as proxy:
        proxy.cut()
        conn = connector(directory, url=f"ldaps://127.0.0.1:{proxy.port}")
        started = time.monotonic()
        error = refusal(conn, "alice", PASSWORDS["alice"])
    assert isinstance(error, ServiceUnavailable) and error.reason == "ldap.unavailable"
    assert error.retry_after == 30
    assert time.monotonic() - started < 5


def test_a_slow_directory_times_out_instead_of_hanging(directory: DirectoryPeer) -> None:
    with TcpProxy(directory.slapd.port) as proxy:
        proxy.latency = 10.0
        conn = connector(directory, tls="plain", url=f"ldap://127.0.0.1:{proxy.port}", timeout_seconds=1)
        started = time.monotonic()
        error = refusal(conn, "alice", PASSWORDS["alice"])
        elapsed = time.monotonic() - started
    assert isinstance(error, ServiceUnavailable) and error.reason == "ldap.timeout"
    # One operation's timeout (the service bind), not the proxy's ten seconds.
    assert elapsed < 5


@pytest.mark.parametrize("tls", ["ldaps", "start_tls"])
def test_a_directory_that_accepts_but_never_answers(directory: DirectoryPeer, tls: str) -> None:
    # A listener that completes TCP but never speaks: the TLS handshake (LDAPS) or the StartTLS request must
    # give up within the timeouts. libldap waits forever on a blocking LDAPS handshake; see OPT_CONNECT_ASYNC.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        scheme = "ldaps" if tls == "ldaps" else "ldap"
        conn = connector(
            directory, tls=tls, url=f"{scheme}://127.0.0.1:{port}", connect_timeout_seconds=1, timeout_seconds=1
        )
        started = time.monotonic()
        error = refusal(conn, "alice", PASSWORDS["alice"])
        elapsed = time.monotonic() - started
    assert isinstance(error, ServiceUnavailable) and error.reason == "ldap.timeout"
    assert elapsed < 4


# ---------------------------------------------------------------- settings


def _settings(store: dict[str, Any], mode: str = "production") -> Any:
    return load_settings(
        None, mode=mode, secret_key=SECRET, public_url="https://broker.example.com", identity_stores=[store]
    )


def test_production_requires_ldaps_or_start_tls(directory: DirectoryPeer) -> None:
    from broker.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        _settings(directory.store(tls="plain"))
    assert caught.value.problems == [
        (
            "identity_stores[0].url",
            f"{directory.url} sends passwords in clear text; use ldaps:// or start_tls: true "
            "(plain ldap:// only in dev mode)",
        )
    ]
    assert _settings(directory.store(tls="start_tls")).identity_stores[0].encrypted
    assert _settings(directory.store(tls="ldaps")).identity_stores[0].encrypted
    assert not _settings(directory.store(tls="plain"), mode="dev").identity_stores[0].encrypted


def test_bad_ldap_settings_are_all_reported(directory: DirectoryPeer) -> None:
    from broker.errors import ConfigError

    store = directory.store(
        url="http://ldap.example.com",
        ca_file="/nonexistent/ca.pem",
        login_attributes=["uid)(x"],
        user_filter="objectClass=person",
        groups={"source": "search"},
        bind_password="env:BROKER_TEST_UNSET_LDAP_PASSWORD",
    )
    with pytest.raises(ConfigError) as caught:
        _settings(store)
    paths = sorted(path for path, _ in caught.value.problems)
    assert paths == [
        "identity_stores[0].bind_password",
        "identity_stores[0].ca_file",
        "identity_stores[0].groups",
        "identity_stores[0].login_attributes",
        "identity_stores[0].url",
        "identity_stores[0].user_filter",
    ]


def test_the_documented_active_directory_store_is_valid(directory: DirectoryPeer) -> None:
    store = {
        "type": "ldap",
        "name": "ad",
        "url": "ldap://dc1.corp.example.com:389",
        "start_tls": True,
        "ca_file": str(directory.ca_file),
        "bind_dn": "CN=svc-broker,OU=Service Accounts,DC=corp,DC=example,DC=com",
        "bind_password": "x" * 16,
        "user_base_dn": "OU=Staff,DC=corp,DC=example,DC=com",
        "user_filter": "(&(objectCategory=person)(objectClass=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))",
        "login_attributes": ["sAMAccountName", "userPrincipalName"],
        "attributes": {"username": "sAMAccountName", "email": "mail", "subject": "objectGUID"},
        "groups": {
            "source": "search",
            "base_dn": "OU=Groups,DC=corp,DC=example,DC=com",
            "filter": "(objectClass=group)",
            "member_attribute": "member:1.2.840.113556.1.4.1941:",
        },
    }
    [config] = _settings(store).identity_stores
    assert config.groups.member_attribute == "member:1.2.840.113556.1.4.1941:"
    assert LdapConnector(config).username_label == "Username or e-mail address"
