"""broker.store.scim on SQLite and PostgreSQL: provisioned users and groups per store, and their memberships."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from broker.store import scim
from broker.store.db import Database
from broker.store.models import ScimGroup, ScimUser
from tests.store.conftest import NOW, assert_refused_by_database


def user(user_id: str, name: str, *, store: str = "corp", at: int = 0, **extra: Any) -> dict[str, Any]:
    return {
        "id": user_id, "client": "okta", "store": store, "user_name": name, "user_name_key": name.lower(),
        "document": {"userName": name}, "created_at": NOW + timedelta(minutes=at), "updated_at": NOW, **extra,
    }  # fmt: skip


def group(group_id: str, name: str, *, store: str = "corp", at: int = 0) -> dict[str, Any]:
    return {
        "id": group_id, "client": "okta", "store": store, "display_name": name, "display_name_key": name.lower(),
        "document": {"displayName": name}, "created_at": NOW + timedelta(minutes=at), "updated_at": NOW,
    }  # fmt: skip


def test_users_added_found_changed_and_deleted(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        assert scim.add_scim_row(s, model=ScimUser, **user("u1", "Ann", external_id="e1", email_key="ann@corp"))
        assert scim.add_scim_row(s, model=ScimUser, **user("u2", "Bob", at=1))
        assert scim.add_scim_row(s, model=ScimUser, **user("u3", "Ann", store="other"))
        # The same userName (folded) in one store is refused and the transaction stays usable.
        assert scim.add_scim_row(s, model=ScimUser, **user("u4", "ann")) is None
    assert_refused_by_database(database, ScimUser, **user("u5", "bob"))
    with database.transaction() as s:
        found = scim.get_scim_user(s, store="corp", user_id="u1", lock=True)
        assert found is not None and (found.user_name, found.version, found.active) == ("Ann", 1, True)
        assert scim.get_scim_user(s, store="other", user_id="u1") is None
        assert [u.id for u in scim.find_scim_users(s, store="corp")] == ["u1", "u2"]
        assert [u.id for u in scim.find_scim_users(s, store="corp", user_name_key="bob")] == ["u2"]
        assert [u.id for u in scim.find_scim_users(s, store="corp", external_id="e1")] == ["u1"]
        assert [u.id for u in scim.find_scim_users(s, store="corp", email_key="ann@corp")] == ["u1"]
        assert [u.id for u in scim.find_scim_users(s, store="corp", ids=["u2", "u3"])] == ["u2"]
        assert scim.count_scim_rows(s, model=ScimUser, store="corp") == 2
        assert [u.id for u in scim.page_scim_rows(s, model=ScimUser, store="corp", offset=1, limit=5)] == ["u2"]
        assert [(u.store, u.id) for u in scim.list_scim_users(s)] == [("corp", "u1"), ("corp", "u2"), ("other", "u3")]
        assert found is not None
        assert scim.save_scim_row(s, row=found, user_name="Anne", user_name_key="anne", active=False)
        bob = scim.get_scim_user(s, store="corp", user_id="u2")
        assert bob is not None
        # A rename onto a taken name is refused; the row is as stored.
        assert not scim.save_scim_row(s, row=bob, user_name="Anne", user_name_key="anne")
        assert (bob.user_name, bob.version) == ("Bob", 1)
        scim.link_scim_user(s, user_id="u1", principal_id=pid, now=NOW)
    with database.transaction() as s:
        anne = scim.get_scim_user(s, store="corp", user_id="u1")
        assert anne is not None
        assert (anne.user_name, anne.active, anne.version, anne.principal_id, anne.signed_in_at) == (
            "Anne",
            False,
            2,
            pid,
            NOW,
        )
        scim.delete_scim_row(s, row=anne)
    with database.transaction() as s:
        assert scim.get_scim_user(s, store="corp", user_id="u1") is None


def test_groups_and_memberships(database: Database) -> None:
    with database.transaction() as s:
        for index, name in enumerate(("Ann", "Bob")):
            scim.add_scim_row(s, model=ScimUser, **user(f"u{index}", name, at=index))
        assert scim.add_scim_row(
            s,
            model=ScimGroup,
            **group(
                "g1",
                "Eng",
            ),
            external_id="x",
        )
        assert scim.add_scim_row(s, model=ScimGroup, **group("g2", "Ops", at=1))
        assert scim.add_scim_row(s, model=ScimGroup, **group("g3", "ENG")) is None
    assert_refused_by_database(database, ScimGroup, **group("g4", "ops"))
    with database.transaction() as s:
        assert [g.id for g in scim.find_scim_groups(s, store="corp")] == ["g1", "g2"]
        assert [g.id for g in scim.find_scim_groups(s, store="corp", display_name_key="ops")] == ["g2"]
        assert [g.id for g in scim.find_scim_groups(s, store="corp", external_id="x")] == ["g1"]
        assert [g.id for g in scim.find_scim_groups(s, store="corp", ids=["g2"])] == ["g2"]
        assert scim.count_scim_rows(s, model=ScimGroup, store="corp") == 2
        assert [g.id for g in scim.page_scim_rows(s, model=ScimGroup, store="corp", offset=0, limit=1)] == ["g1"]
        eng = scim.get_scim_group(s, store="corp", group_id="g1", lock=True)
        assert eng is not None and scim.get_scim_group(s, store="other", group_id="g1") is None
        scim.set_scim_members(s, group_id="g1", members={"u1": "Bob", "u0": None})
        scim.set_scim_members(s, group_id="g2", members={"u0": "Ann"})
        assert scim.save_scim_row(s, row=eng, display_name="Engineering", display_name_key="engineering")
    with database.transaction() as s:
        members = scim.scim_members(s, group_ids=["g1", "g2"])
        assert [(u.id, shown) for u, shown in members["g1"]] == [("u0", None), ("u1", "Bob")]
        assert [(u.id, shown) for u, shown in members["g2"]] == [("u0", "Ann")]
        groups = scim.scim_groups_of(s, user_ids=["u0", "u1"])
        assert {k: [g.display_name for g in v] for k, v in groups.items()} == {
            "u0": ["Engineering", "Ops"],
            "u1": ["Engineering"],
        }
        scim.set_scim_members(s, group_id="g1", members={"u1": None})
        ops = scim.get_scim_group(s, store="corp", group_id="g2")
        ann = scim.get_scim_user(s, store="corp", user_id="u0")
        assert ops is not None and ann is not None
        scim.delete_scim_row(s, row=ops)
        scim.delete_scim_row(s, row=ann)
    with database.transaction() as s:
        assert [u.id for u, _ in scim.scim_members(s, group_ids=["g1"])["g1"]] == ["u1"]
        assert scim.scim_groups_of(s, user_ids=["u0"]) == {"u0": []}
        assert scim.scim_members(s, group_ids=["g2"]) == {"g2": []}
