"""The requests Okta and Microsoft Entra ID send, byte for byte in shape, against the live broker.

Shapes from the vendors' SCIM integration guides: Okta's "SCIM 2.0 protocol reference" (PATCH with a value
object and no path, group renames that repeat the group's id, member removal by filter) and Microsoft's
"Tutorial: Develop and plan provisioning for a SCIM endpoint" (capitalised ``op`` values, string booleans,
``remove`` with a ``value`` listing the members, the enterprise extension).
"""

from __future__ import annotations

from typing import Any

from tests.scim.conftest import GROUP_SCHEMA, PATCH_SCHEMA, USER_SCHEMA, ScimBroker

ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"


def okta_user(login: str) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA],
        "userName": login,
        "name": {"givenName": "Alice", "familyName": "Liddell"},
        "emails": [{"primary": True, "value": login, "type": "work"}],
        "displayName": "Alice Liddell",
        "locale": "en-US",
        "externalId": "00ujl29u0le5T6Aj10h7",
        "groups": [],
        "password": "1mz050nq",
        "active": True,
    }


def entra_user(name: str) -> dict[str, Any]:
    return {
        "schemas": [USER_SCHEMA, ENTERPRISE],
        "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
        "userName": name,
        "active": True,
        "emails": [{"primary": True, "type": "work", "value": f"{name}@contoso.example"}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
        "roles": [],
        ENTERPRISE: {"department": "Engineering", "employeeNumber": "701984"},
    }


def members(broker: ScimBroker, group_id: str) -> list[str]:
    with broker.client() as c:
        return sorted(m["value"] for m in c.get(f"/Groups/{group_id}").json().get("members", []))


def test_okta_lifecycle(scim_broker: ScimBroker) -> None:
    with scim_broker.client() as c:
        # Okta looks the person up first, then creates them.
        found = c.get("/Users", params={"filter": 'userName eq "alice@example.com"', "startIndex": 1, "count": 100})
        assert found.status_code == 200
        assert found.json()["totalResults"] == 0
        created = c.post("/Users", json=okta_user("alice@example.com"))
        assert created.status_code == 201, created.text
        user = created.json()
        assert user["externalId"] == "00ujl29u0le5T6Aj10h7"
        assert "password" not in user
        # Profile push: PUT of the whole user.
        replaced = c.put(f"/Users/{user['id']}", json={**okta_user("alice@example.com"), "displayName": "Alice L."})
        assert replaced.status_code == 200, replaced.text
        assert replaced.json()["displayName"] == "Alice L."
        # Group push: create, add a member, rename (the value repeats the group's id), remove by filter.
        group = c.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "engineering", "members": []})
        assert group.status_code == 201, group.text
        gid = group.json()["id"]
        add = {"op": "add", "path": "members", "value": [{"value": user["id"], "display": "alice@example.com"}]}
        assert c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_SCHEMA], "Operations": [add]}).status_code == 204
        assert members(scim_broker, gid) == [user["id"]]
        rename = {"op": "replace", "value": {"id": gid, "displayName": "engineering-renamed"}}
        renamed = c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_SCHEMA], "Operations": [rename]})
        assert renamed.status_code == 204, renamed.text
        assert c.get(f"/Groups/{gid}").json()["displayName"] == "engineering-renamed"
        remove = {"op": "remove", "path": f'members[value eq "{user["id"]}"]'}
        assert c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_SCHEMA], "Operations": [remove]}).status_code == 204
        assert members(scim_broker, gid) == []
        # Deactivation: a value object without a path.
        off = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": False}}]}
        assert c.patch(f"/Users/{user['id']}", json=off).status_code == 204
        assert c.get(f"/Users/{user['id']}").json()["active"] is False


def test_entra_lifecycle(scim_broker: ScimBroker) -> None:
    with scim_broker.client() as c:
        # Entra's connectivity test: a filter on a random userName finds nothing.
        probe = c.get("/Users", params={"filter": 'userName eq "non-existent user"'})
        assert probe.status_code == 200
        assert probe.json()["totalResults"] == 0
        created = c.post("/Users", json=entra_user("Test_User_ab6490ee"))
        assert created.status_code == 201, created.text
        uid = created.json()["id"]
        assert created.json()[ENTERPRISE]["department"] == "Engineering"
        assert c.get("/Users/00000000-0000-0000-0000-000000000000").status_code == 404
        # Several attributes at once, capitalised ops, a filtered path and the extension's URN path.
        operations = [
            {"op": "Add", "path": "nickName", "value": "Babs"},
            {"op": "Replace", "path": 'emails[type eq "work"].value', "value": "updated@contoso.example"},
            {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"},
            {"op": "Replace", "path": f"{ENTERPRISE}:department", "value": "Sales"},
        ]
        changed = c.patch(f"/Users/{uid}", json={"schemas": [PATCH_SCHEMA], "Operations": operations})
        assert changed.status_code == 204, changed.text
        user = c.get(f"/Users/{uid}").json()
        assert user["nickName"] == "Babs"
        assert user["emails"][0]["value"] == "updated@contoso.example"
        assert user["name"]["familyName"] == "updatedFamilyName"
        assert user[ENTERPRISE]["department"] == "Sales"
        # Groups: create with Entra's meta, look up without members, add and remove members Entra's way.
        group = {"schemas": [GROUP_SCHEMA], "externalId": "8aa1a0c0", "displayName": "Engineering", "meta": {}}
        group["meta"] = {"resourceType": "Group"}
        made = c.post("/Groups", json=group)
        assert made.status_code == 201, made.text
        gid = made.json()["id"]
        lookup = c.get("/Groups", params={"excludedAttributes": "members", "filter": 'displayName eq "Engineering"'})
        assert lookup.json()["totalResults"] == 1
        assert "members" not in lookup.json()["Resources"][0]
        add = {"op": "Add", "path": "members", "value": [{"$ref": None, "value": uid}]}
        assert c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_SCHEMA], "Operations": [add]}).status_code == 204
        member_filter = f'id eq "{gid}" and members[value eq "{uid}"]'
        check = c.get("/Groups", params={"excludedAttributes": "members", "filter": member_filter})
        assert check.json()["totalResults"] == 1
        remove = {"op": "Remove", "path": "members", "value": [{"$ref": None, "value": uid}]}
        assert c.patch(f"/Groups/{gid}", json={"schemas": [PATCH_SCHEMA], "Operations": [remove]}).status_code == 204
        assert members(scim_broker, gid) == []
        # Deactivation with a string boolean, as Entra sends it.
        off = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
        assert c.patch(f"/Users/{uid}", json=off).status_code == 204
        assert c.get(f"/Users/{uid}").json()["active"] is False
        assert c.delete(f"/Users/{uid}").status_code == 204
        assert c.get(f"/Users/{uid}").status_code == 404
