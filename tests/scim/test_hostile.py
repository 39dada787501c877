"""Hostile and broken provisioning requests: each gets its exact status and scimType, leaves the data as it
was, and writes exactly one audit event with the refusal's reason (RFC 7644 section 3.12)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.scim.conftest import ERROR_SCHEMA, GROUP_SCHEMA, ScimBroker, new_user, patch


def refused(broker: ScimBroker, response: httpx.Response, after: int, status: int, scim_type: str | None, reason: str):
    """Assert the SCIM error body and the one audit event it left; return that event."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["schemas"] == [ERROR_SCHEMA]
    assert body["status"] == str(status)
    assert body.get("scimType") == scim_type
    assert response.headers["content-type"].startswith("application/scim+json")
    events = [e for e in broker.audit(after) if e.outcome == "denied"]
    assert [(e.event, e.reason) for e in events] == [("scim", reason)]
    return events[0]


def provision(broker: ScimBroker) -> dict[str, Any]:
    with broker.client() as c:
        user = c.post("/Users", json=new_user("alice")).json()
        admins = c.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "admins"}).json()
    return {"user": user, "admins": admins}


def test_missing_and_wrong_tokens_are_refused(scim_broker: ScimBroker) -> None:
    after = scim_broker.last_seq()
    response = httpx.get(f"{scim_broker.base}/Users")
    refused(scim_broker, response, after, 401, None, "scim.token_missing")
    assert response.headers["www-authenticate"] == 'Bearer realm="SCIM"'
    after = scim_broker.last_seq()
    response = httpx.get(f"{scim_broker.base}/Users", headers={"Authorization": "Bearer " + "x" * 48})
    refused(scim_broker, response, after, 401, None, "scim.token_invalid")
    # A token of one client hashed into another's config is not accepted as anything else: basic auth is not.
    after = scim_broker.last_seq()
    response = httpx.get(f"{scim_broker.base}/Users", auth=("idp", scim_broker.tokens["idp"]))
    refused(scim_broker, response, after, 401, None, "scim.token_invalid")


def test_token_guessing_is_rate_limited(scim_broker_factory: Any) -> None:
    with scim_broker_factory(config={"rate_limits": {"limits": {"scim_auth.ip": "2/minute"}}}) as broker:
        for _ in range(2):
            assert httpx.get(f"{broker.base}/Users", headers={"Authorization": "Bearer guess"}).status_code == 401
        after = broker.last_seq()
        response = httpx.get(f"{broker.base}/Users", headers={"Authorization": "Bearer guess"})
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.json()["schemas"] == [ERROR_SCHEMA]
        reasons = [(e.event, e.reason) for e in broker.audit(after) if e.outcome == "denied"]
        assert reasons == [("scim", "scim.token_invalid"), ("ratelimit", "rate_limited.scim_auth.ip")]


@pytest.mark.parametrize(
    "expression",
    [
        'userName eq "alice" or 1 eq 1',
        'userName eq "alice") or (userName pr',
        "userName eq alice'; DROP TABLE scim_users; --",
        'userName eq "\\u0000" or',
    ],
)
def test_filter_injection_is_an_invalid_filter(scim_broker: ScimBroker, expression: str) -> None:
    provision(scim_broker)
    after = scim_broker.last_seq()
    with scim_broker.client() as c:
        response = c.get("/Users", params={"filter": expression})
        event = refused(scim_broker, response, after, 400, "invalidFilter", "scim.invalidFilter")
        assert event.principal == "scim:idp"
        # The table is still there and still holds alice.
        assert c.get("/Users", params={"filter": 'userName eq "alice"'}).json()["totalResults"] == 1


def test_sql_in_a_filter_value_is_only_a_value(scim_broker: ScimBroker) -> None:
    provision(scim_broker)
    with scim_broker.client() as c:
        response = c.get("/Users", params={"filter": "userName eq \"' OR '1'='1\""})
        assert response.status_code == 200
        assert response.json()["totalResults"] == 0
        assert c.get("/Users").json()["totalResults"] == 1


def test_over_long_filter_is_refused_before_parsing(scim_broker: ScimBroker) -> None:
    after = scim_broker.last_seq()
    expression = " or ".join(f'userName eq "u{i}"' for i in range(40))
    assert len(expression) > 512
    with scim_broker.client() as c:
        response = c.get("/Users", params={"filter": expression})
        refused(scim_broker, response, after, 400, "invalidFilter", "scim.filter_too_long")
        after = scim_broker.last_seq()
        response = c.post("/Users/.search", json={"schemas": [], "filter": expression})
        refused(scim_broker, response, after, 400, "invalidFilter", "scim.filter_too_long")


@pytest.mark.parametrize(
    "operation",
    [
        {"op": "replace", "path": "id", "value": "00000000-0000-0000-0000-000000000000"},
        {"op": "Replace", "path": "meta.created", "value": "2000-01-01T00:00:00Z"},
        {"op": "add", "path": "meta.resourceType", "value": "Group"},
        {"op": "replace", "value": {"id": "00000000-0000-0000-0000-000000000000", "active": False}},
        {"op": "remove", "path": "id"},
    ],
)
def test_patch_cannot_set_id_or_meta(scim_broker: ScimBroker, operation: dict[str, Any]) -> None:
    user = provision(scim_broker)["user"]
    after = scim_broker.last_seq()
    with scim_broker.client() as c:
        response = c.patch(f"/Users/{user['id']}", json=patch(operation))
        refused(scim_broker, response, after, 400, "mutability", "scim.mutability")
        unchanged = c.get(f"/Users/{user['id']}").json()
    assert unchanged["id"] == user["id"]
    assert unchanged["meta"]["created"] == user["meta"]["created"]
    assert unchanged["meta"]["version"] == user["meta"]["version"]
    assert unchanged["active"] is True


def test_users_only_client_cannot_touch_groups(scim_broker: ScimBroker) -> None:
    """The contractors' HR feed may not put anyone into the admins group, nor even read groups."""
    made = provision(scim_broker)
    with scim_broker.client("hr") as hr:
        contractor = hr.post("/Users", json=new_user("mallory")).json()
        add = {"op": "add", "path": "members", "value": [{"value": contractor["id"]}]}
        for request in (
            lambda: hr.patch(f"/Groups/{made['admins']['id']}", json=patch(add)),
            lambda: hr.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "admins"}),
            lambda: hr.get("/Groups"),
        ):
            after = scim_broker.last_seq()
            event = refused(scim_broker, request(), after, 403, None, "scim.groups_not_allowed")
            assert event.detail["client"] == "hr"
        # users' "groups" is read-only: naming a group on the user changes nothing.
        hr.put(f"/Users/{contractor['id']}", json=new_user("mallory", groups=[{"value": made["admins"]["id"]}]))
    with scim_broker.client() as idp:
        assert idp.get(f"/Groups/{made['admins']['id']}").json().get("members") is None


def test_client_manages_only_its_allowed_groups_and_its_own_store(scim_broker: ScimBroker) -> None:
    made = provision(scim_broker)
    with scim_broker.client("partners") as partners:
        after = scim_broker.last_seq()
        response = partners.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "Admins"})
        refused(scim_broker, response, after, 403, None, "scim.group_not_allowed")
        readers = partners.post("/Groups", json={"schemas": [GROUP_SCHEMA], "displayName": "partner-readers"})
        assert readers.status_code == 201
        after = scim_broker.last_seq()
        rename = patch({"op": "replace", "path": "displayName", "value": "admins"})
        response = partners.patch(f"/Groups/{readers.json()['id']}", json=rename)
        refused(scim_broker, response, after, 403, None, "scim.group_not_allowed")
        # Another client's people and groups do not exist for this client.
        after = scim_broker.last_seq()
        response = partners.get(f"/Users/{made['user']['id']}")
        refused(scim_broker, response, after, 404, None, "scim.not_found")
        after = scim_broker.last_seq()
        add = {"op": "add", "path": "members", "value": [{"value": made["user"]["id"]}]}
        response = partners.patch(f"/Groups/{readers.json()['id']}", json=patch(add))
        refused(scim_broker, response, after, 400, "invalidValue", "scim.invalidValue")
        assert partners.get("/Users").json()["totalResults"] == 0


def test_duplicate_user_name_is_a_uniqueness_conflict(scim_broker: ScimBroker) -> None:
    provision(scim_broker)
    after = scim_broker.last_seq()
    with scim_broker.client() as c:
        response = c.post("/Users", json=new_user("ALICE"))
        refused(scim_broker, response, after, 409, "uniqueness", "scim.uniqueness")
        assert c.get("/Users").json()["totalResults"] == 1


def test_the_password_an_idp_sends_is_never_stored(scim_broker: ScimBroker) -> None:
    from tests.test_leaks import dump_database

    with scim_broker.client() as c:
        created = c.post("/Users", json=new_user("alice", password="Tr0ub4dor&3-unique-marker"))
        assert created.status_code == 201
        assert "password" not in created.json()
        # Nor can a filter probe for it.
        found = c.get("/Users", params={"filter": 'password eq "Tr0ub4dor&3-unique-marker"'})
        assert found.json()["totalResults"] == 0
    assert "Tr0ub4dor" not in dump_database(scim_broker.db_url)
