"""What provisioning means for access, end to end: scim2-client plays the IdP over HTTP, a person signs in
to the same live broker, and each change counts at the very next decision."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml
from scim2_client.engines.httpx2 import SyncSCIMClient
from scim2_models import Context, PatchOp

from broker.store import queries
from broker.store.db import Database
from broker.store.models import AccessRequestRow
from tests.scim.conftest import GROUP_SCHEMA as GROUP
from tests.scim.conftest import USER_SCHEMA as USER
from tests.scim.conftest import ScimBroker
from tests.support.portal import csrf_from
from tests.support.processes import broker_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def idp(scim_broker: ScimBroker) -> Iterator[SyncSCIMClient]:
    """scim2-client acting as the IdP's provisioning connector, with the server's own schemas discovered."""
    http = httpx2.Client(base_url=scim_broker.base, headers={"Authorization": f"Bearer {scim_broker.tokens['idp']}"})
    client = SyncSCIMClient(http)
    client.discover()
    try:
        yield client
    finally:
        http.close()


def model(idp: SyncSCIMClient, name: str) -> Any:
    found = idp.get_resource_model(name)
    assert found is not None
    return found


def membership(idp: SyncSCIMClient, group: Any, op: str, user: Any) -> None:
    group_model = model(idp, "Group")
    operation = {"op": op, "path": "members", "value": [{"value": user.id}]}
    if op == "remove":
        operation = {"op": "remove", "path": f'members[value eq "{user.id}"]'}
    body = {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": [operation]}
    patch = PatchOp[group_model].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST)
    idp.modify(group_model, group.id, patch)


def deactivate(idp: SyncSCIMClient, user: Any) -> None:
    user_model = model(idp, "User")
    body = {
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": False}],
    }
    idp.modify(user_model, user.id, PatchOp[user_model].model_validate(body, scim_ctx=Context.RESOURCE_PATCH_REQUEST))


def access_report(broker: ScimBroker, tmp_path: Path) -> dict[str, Any]:
    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump(broker.config))
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "access-report", "-c", str(config), "--format", "json"],
        cwd=ROOT,
        env=broker_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def principal_id(broker: ScimBroker, username: str = "alice") -> int:
    db = Database(broker.db_url)
    try:
        with db.transaction() as session:
            [principal] = queries.principals_of_store(session, store="breakglass", username=username)
            return principal.id
    finally:
        db.dispose()


def test_provisioned_groups_decide_roles_from_before_first_sign_in(
    scim_broker: ScimBroker, idp: SyncSCIMClient, tmp_path: Path
) -> None:
    alice = idp.create(model(idp, "User")(user_name="alice", active=True))
    engineering = idp.create(model(idp, "Group")(display_name="engineering"))
    membership(idp, engineering, "add", alice)

    # Before alice ever signs in, the access report shows her and the role the rule naming her group gives.
    [waiting] = access_report(scim_broker, tmp_path)["provisioned_never_signed_in"]
    assert (waiting["user_name"], waiting["groups"], waiting["roles"]) == ("alice", ["engineering"], ["readonly"])

    browser = scim_broker.sign_in()
    assert browser.headers["X-Test-Sign-In"] == "303"
    # Her break-glass account also claims "admins"; provisioning is what counts, and it says engineering only.
    page = browser.get("/", headers={"Accept": "text/html"}).text
    assert "readonly" in page and "Admin" not in page
    assert scim_broker.credentials(browser, "readonly").status_code == 200
    assert access_report(scim_broker, tmp_path)["provisioned_never_signed_in"] == []

    # Removed from the group: the same session's next decision refuses.
    membership(idp, engineering, "remove", alice)
    after = scim_broker.last_seq()
    denied = scim_broker.credentials(browser, "readonly")
    assert denied.status_code == 403
    [event] = [e for e in scim_broker.audit(after) if e.event == "credentials"]
    assert (event.outcome, event.reason) == ("denied", "role_not_granted")
    # Added back: granted again, without signing in again.
    membership(idp, engineering, "add", alice)
    assert scim_broker.credentials(browser, "readonly").status_code == 200


def test_deactivation_ends_everything_at_once(scim_broker: ScimBroker, idp: SyncSCIMClient) -> None:
    alice = idp.create(model(idp, "User")(user_name="alice", active=True))
    engineering = idp.create(model(idp, "Group")(display_name="engineering"))
    membership(idp, engineering, "add", alice)
    browser = scim_broker.sign_in()
    assert scim_broker.credentials(browser, "readonly").status_code == 200
    pid = principal_id(scim_broker)
    db = Database(scim_broker.db_url)
    try:
        # A CLI sign-in of hers (a refresh-token family), as `broker login` leaves one.
        now = scim_broker.clock()
        with db.transaction() as session:
            queries.create_refresh_family(
                session, token_hmac="0" * 64, id="f" * 36, principal_id=pid, client_id="broker-cli",
                grant_type="device_code", identity={}, created_at=now, expires_at=now + timedelta(hours=8),
            )  # fmt: skip
        after = scim_broker.last_seq()
        deactivate(idp, alice)

        # Signed out everywhere: the browser session is gone, the CLI sign-in revoked, the credentials revoked.
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 303
        with db.transaction() as session:
            assert queries.get_refresh_family(session, family_id="f" * 36).revoked_at is not None  # type: ignore[union-attr]
            assert all(i.revoked_at is not None for i in queries.find_issuances(session, principal_id=pid))
    finally:
        db.dispose()
    events = [(e.event, e.reason) for e in scim_broker.audit(after) if e.outcome != "denied"]
    assert ("scim", "user_deactivated") in events
    assert ("revocation", "aws_not_applied") in events or ("revocation", "revoked_principal") in events
    [done] = [e for e in scim_broker.audit(after) if e.reason == "principal_deactivated"]
    assert done.detail["revocation"]["sessions"] == 2
    assert len(done.detail["revocation"]["issuances"]) == 1

    # And she cannot come back in until the IdP says so.
    after = scim_broker.last_seq()
    refused = scim_broker.sign_in()
    assert refused.headers["X-Test-Sign-In"] == "403"
    [event] = [e for e in scim_broker.audit(after) if e.event == "login"]
    assert (event.outcome, event.reason) == ("denied", "scim.user_inactive")
    user_model = model(idp, "User")
    idp.replace(user_model(id=alice.id, user_name="alice", active=True))
    assert scim_broker.sign_in().headers["X-Test-Sign-In"] == "303"


def test_recreated_user_inherits_nothing(scim_broker: ScimBroker, idp: SyncSCIMClient) -> None:
    alice = idp.create(model(idp, "User")(user_name="alice", active=True))
    engineering = idp.create(model(idp, "Group")(display_name="engineering"))
    membership(idp, engineering, "add", alice)
    browser = scim_broker.sign_in()
    assert scim_broker.credentials(browser, "readonly").status_code == 200
    pid = principal_id(scim_broker)
    now = scim_broker.clock()
    db = Database(scim_broker.db_url)
    try:
        with db.transaction() as session:
            # An open just-in-time grant and a broker-held factor of the old alice.
            queries.create_access_request(
                session, principal_id=pid, principal="alice@example.com", role_name="admin", reason="INC-1",
                duration_seconds=3600, status="approved", created_at=now, expires_at=now + timedelta(hours=1),
                grant_starts_at=now, grant_ends_at=now + timedelta(hours=1),
            )  # fmt: skip
            queries.add_mfa_factor(session, principal_id=pid, kind="totp", name="phone", created_at=now)

        idp.delete(model(idp, "User"), alice.id)
        again = idp.create(model(idp, "User")(user_name="alice", active=True))
        assert again.id != alice.id

        with db.transaction() as session:
            [grant] = session.query(AccessRequestRow).filter_by(principal_id=pid).all()
            assert grant.status == "revoked"
            assert queries.list_mfa_factors(session, principal_id=pid, confirmed_only=False) == []
            assert all(i.revoked_at is not None for i in queries.find_issuances(session, principal_id=pid))
    finally:
        db.dispose()
    # The old session ended with the old person; the new one is in no group, so no role.
    assert browser.get("/", headers={"Accept": "text/html"}).status_code == 303
    assert idp.query(model(idp, "Group"), engineering.id).members is None
    fresh = scim_broker.sign_in()
    assert fresh.headers["X-Test-Sign-In"] == "303"
    assert scim_broker.credentials(fresh, "readonly").status_code == 403


def test_sign_in_needs_a_provisioned_account(scim_broker: ScimBroker) -> None:
    after = scim_broker.last_seq()
    assert scim_broker.sign_in().headers["X-Test-Sign-In"] == "403"
    [event] = [e for e in scim_broker.audit(after) if e.event == "login"]
    assert (event.outcome, event.reason) == ("denied", "scim.not_provisioned")


def test_paging_and_filters(scim_broker: ScimBroker, idp: SyncSCIMClient) -> None:
    user_model = model(idp, "User")
    for index in range(7):
        idp.create(user_model(user_name=f"user{index}", external_id=f"ext-{index}", active=index % 2 == 0))
    with scim_broker.client() as c:
        pages = [c.get("/Users", params={"startIndex": start, "count": 3}).json() for start in (1, 4, 7)]
        assert [p["totalResults"] for p in pages] == [7, 7, 7]
        assert [len(p["Resources"]) for p in pages] == [3, 3, 1]
        names = [r["userName"] for p in pages for r in p["Resources"]]
        assert sorted(names) == [f"user{i}" for i in range(7)]
        active = c.get("/Users", params={"filter": "active eq true", "count": 10}).json()
        assert sorted(r["userName"] for r in active["Resources"]) == ["user0", "user2", "user4", "user6"]
        by_external = c.get("/Users", params={"filter": 'externalId eq "ext-3"'}).json()
        assert [r["userName"] for r in by_external["Resources"]] == ["user3"]
        starts = c.get("/Users", params={"filter": 'userName sw "USER1"'}).json()
        assert [r["userName"] for r in starts["Resources"]] == ["user1"]
        # The page size is capped at scim.max_results (ServiceProviderConfig filter.maxResults).
        capped = c.get("/Users", params={"count": 5000}).json()
        assert capped["itemsPerPage"] == 7
        config = c.get("/ServiceProviderConfig").json()
        assert config["filter"] == {"supported": True, "maxResults": 100}
        assert config["bulk"]["supported"] is False


def test_just_in_time_eligibility_follows_provisioned_groups(scim_broker_factory: Any) -> None:
    oncall = {
        "name": "oncall-admin",
        "role_arn": "arn:aws:iam::123456789012:role/OncallAdmin",
        "grant": [{"groups": ["oncall"]}],
        "mfa": "mfa",
        "requires_request": {"approvers": ["leads"], "max_duration_seconds": 3600},
    }
    # A broker whose roles include one nobody holds standing: eligible through the provisioned group "oncall".
    with scim_broker_factory(config={"roles": [oncall]}) as broker, broker.client() as idp:
        alice = idp.post("/Users", json={"schemas": [USER], "userName": "alice"}).json()
        browser = broker.sign_in()

        def ask() -> int:
            page = browser.get("/", headers={"Accept": "text/html"})
            form = {"role": "oncall-admin", "reason": "INC-42", "duration": "", "csrf": csrf_from(page.text)}
            return browser.post("/requests", data=form, headers={"Accept": "text/html"}).status_code

        after = broker.last_seq()
        assert ask() == 403
        [event] = [e for e in broker.audit(after) if e.event == "access_request"]
        assert (event.outcome, event.reason) == ("denied", "request_not_eligible")
        group = {"schemas": [GROUP], "displayName": "oncall", "members": [{"value": alice["id"]}]}
        assert idp.post("/Groups", json=group).status_code == 201
        assert ask() == 303
