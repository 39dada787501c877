"""LDAP directories: one way to encrypt, filters in parentheses."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.config_files import good, problems

LDAP = {
    "type": "ldap",
    "name": "corp",
    "bind_dn": "cn=broker,dc=example,dc=com",
    "bind_password": "directory-password",
    "user_base_dn": "ou=people,dc=example,dc=com",
}


def test_ldaps_and_start_tls_are_not_both_set(tmp_path: Path) -> None:
    store: dict[str, Any] = LDAP | {"url": "ldaps://ldap.example.com", "start_tls": True}
    assert problems(tmp_path, good() | {"identity_stores": [store]}) == {
        "identity_stores[0]": "use ldaps:// or start_tls, not both"
    }


def test_group_search_needs_a_base_and_a_filter_in_parentheses(tmp_path: Path) -> None:
    store: dict[str, Any] = LDAP | {"url": "ldaps://ldap.example.com", "groups": {"source": "search"}}
    assert problems(tmp_path, good() | {"identity_stores": [store]}) == {
        "identity_stores[0].groups": "source search needs base_dn (where the group entries are)"
    }
