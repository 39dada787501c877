"""broker.store.principals on SQLite and PostgreSQL: one principal per (store, subject), found and disabled."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from broker.store import principals
from broker.store.db import Database
from broker.store.models import Principal
from tests.store.conftest import NOW, assert_refused_by_database, identity


def test_upsert_creates_then_updates_the_same_row(database: Database) -> None:
    with database.transaction() as s:
        created = principals.upsert_principal(s, identity=identity(groups=frozenset({"b", "a"})), now=NOW)
        first_id = created.id
        assert (created.username, created.groups, created.disabled) == ("ann", ["a", "b"], False)
    later = NOW + timedelta(hours=1)
    with database.transaction() as s:
        again = principals.upsert_principal(s, identity=identity(username="anne", email="a@corp.test"), now=later)
        assert again.id == first_id
        assert (again.username, again.email, again.groups) == ("anne", "a@corp.test", [])
        assert (again.first_seen_at, again.last_seen_at) == (NOW, later)


def test_touch_principal_inserts_once_then_updates_in_place(database: Database) -> None:
    with database.transaction() as s:
        created, disabled = principals.touch_principal(s, identity=identity(groups=frozenset({"b", "a"})), now=NOW)
    assert not disabled
    later = NOW + timedelta(hours=1)
    renamed = identity(username="anne", email="anne@corp.test")
    with database.transaction() as s:
        assert principals.touch_principal(s, identity=renamed, now=later).id == created
        row = principals.upsert_principal(s, identity=renamed, now=later)
        assert row.id == created
        assert (row.username, row.email, row.groups, row.disabled) == ("anne", "anne@corp.test", [], False)
        assert (row.first_seen_at, row.last_seen_at) == (NOW, later)
    with database.transaction() as s:
        assert principals.touch_principal(s, identity=identity(store="other"), now=NOW).id != created


def test_store_and_subject_are_unique_in_the_database(database: Database, add_principal: Callable[..., int]) -> None:
    add_principal("u1")
    assert_refused_by_database(
        database, Principal, store="corp", subject="u1", issuer="i", username="x", first_seen_at=NOW, last_seen_at=NOW
    )


def test_disable_and_read_back(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal("u1")
    with database.transaction() as s:
        assert not principals.principal_disabled(s, store="corp", subject="u1")
        assert not principals.principal_disabled(s, store="corp", subject="nobody")
        principals.set_principal_disabled(s, principal_id=pid, disabled=True)
    with database.transaction() as s:
        assert principals.principal_disabled(s, store="corp", subject="u1")
        assert principals.principal_id_disabled(s, principal_id=pid)
        assert principals.touch_principal(s, identity=identity(), now=NOW).disabled
        principals.set_principal_disabled(s, principal_id=pid, disabled=False)
    with database.transaction() as s:
        assert not principals.principal_id_disabled(s, principal_id=pid)
        assert not principals.principal_id_disabled(s, principal_id=pid + 1000)


def test_find_get_list_and_of_store(database: Database, add_principal: Callable[..., int]) -> None:
    ann = add_principal("u1", username="ann", email="Ann@Corp.test")
    bob = add_principal("u2", username="bob")
    other = add_principal("u1", store="other", username="ann")
    with database.transaction() as s:
        assert [p.id for p in principals.find_principals(s, name="ann")] == [ann, other]
        assert [p.id for p in principals.find_principals(s, name="Ann@Corp.test")] == [ann]
        assert [p.id for p in principals.find_principals(s, name="other:u1")] == [other]
        assert principals.find_principals(s, name="nobody") == []
        found = principals.get_principal(s, principal_id=bob)
        assert found is not None and found.username == "bob"
        assert principals.get_principal(s, principal_id=bob + 1000) is None
        assert [p.id for p in principals.list_principals(s)] == [ann, bob, other]
        assert [p.id for p in principals.principals_of_store(s, store="corp", username="ANN")] == [ann]
        assert [p.id for p in principals.principals_of_store(s, store="corp", email="ann@corp.TEST")] == [ann]
        assert [p.id for p in principals.principals_of_store(s, store="corp", subject="u2")] == [bob]
        assert principals.principals_of_store(s, store="corp", subject="U2") == []


def test_remember_network_reports_new_networks_once(database: Database) -> None:
    with database.transaction() as s:
        assert principals.remember_network(s, principal="ann", network="10.0.0.0/24", now=NOW) == (True, False)
    with database.transaction() as s:
        assert principals.remember_network(s, principal="ann", network="10.0.0.0/24", now=NOW) == (False, True)
        assert principals.remember_network(s, principal="ann", network="10.1.0.0/24", now=NOW) == (True, True)
        assert principals.remember_network(s, principal="bob", network="10.0.0.0/24", now=NOW) == (True, False)


HOSTILE = "quote' \" -- ; DROP TABLE principals; \u202e rtl " + "x" * 65536


def test_hostile_values_are_stored_verbatim(database: Database) -> None:
    hostile = identity(HOSTILE, username=HOSTILE, email=HOSTILE, groups=frozenset({HOSTILE}))
    with database.transaction() as s:
        pid = principals.upsert_principal(s, identity=hostile, now=NOW).id
    with database.transaction() as s:
        row = principals.get_principal(s, principal_id=pid)
        assert row is not None and (row.subject, row.username, row.email, row.groups) == (
            HOSTILE,
            HOSTILE,
            HOSTILE,
            [HOSTILE],
        )
