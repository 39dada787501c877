"""Deprovisioning reaches AWS: a person their IdP deactivates loses the STS credentials they already hold.

Against moto's IAM and STS with authentication enforced (see tests/aws/test_revoke.py for what moto
evaluates): the broker writes the deny statement naming the person's SourceIdentity on the role, and the
credentials issued before the deactivation are refused from then on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import boto3
import pytest

from broker.aws.revoke import POLICY_NAME
from broker.identity import Credentials
from tests.aws.test_revoke import ROLE_ARN, can_list_roles, iam_world  # noqa: F401 - iam_world is a fixture
from tests.scim.conftest import PATCH_SCHEMA, new_user
from tests.support.portal import env_credentials


def test_deactivated_person_loses_live_aws_credentials(
    iam_world: dict[str, str],  # noqa: F811 - the fixture imported above
    scim_broker_factory: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    endpoint = iam_world["endpoint"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_world["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_world["secret"])
    config = {
        "roles": [{"name": "deploy", "role_arn": ROLE_ARN, "grant": [{"groups": ["engineering"]}], "mfa": "mfa"}],
        "aws": {"region": "us-east-1", "sts_endpoint_url": endpoint, "federation_endpoint": None, "max_attempts": 1},
    }
    with scim_broker_factory(config=config) as broker, broker.client() as idp:
        alice = idp.post("/Users", json=new_user("alice")).json()
        group = {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "engineering"}
        group["members"] = [{"value": alice["id"]}]
        assert idp.post("/Groups", json=group).status_code == 201

        browser = broker.sign_in()
        page = broker.credentials(browser, "deploy")
        assert page.status_code == 200, page.text
        env = env_credentials(page.text)
        held = Credentials(
            access_key_id=env["AWS_ACCESS_KEY_ID"],
            secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            session_token=env["AWS_SESSION_TOKEN"],
            expiration=datetime.now(UTC),
        )
        assert can_list_roles(endpoint, held)

        before = datetime.now(UTC).replace(microsecond=0)
        after_seq = broker.last_seq()
        off = {"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]}
        assert idp.patch(f"/Users/{alice['id']}", json=off).status_code == 204

        assert not can_list_roles(endpoint, held)
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1")
        [statement] = iam.get_role_policy(RoleName="Deploy", PolicyName=POLICY_NAME)["PolicyDocument"]["Statement"]
        assert statement["Condition"]["StringEquals"] == {"aws:SourceIdentity": "alice@example.com"}
        cut = datetime.fromisoformat(
            statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"].replace("Z", "+00:00")
        )
        assert cut >= before
        [revocation] = [e for e in broker.audit(after_seq) if e.event == "revocation"]
        assert (revocation.outcome, revocation.reason, revocation.principal) == ("ok", "revoked_principal", "scim:idp")
        assert revocation.detail["aws_applied"] == [ROLE_ARN]
        # Nothing new for her either: her session ended, and signing in again is refused.
        assert browser.get("/", headers={"Accept": "text/html"}).status_code == 303
        after_seq = broker.last_seq()
        assert broker.sign_in().headers["X-Test-Sign-In"] == "403"
        assert [e.reason for e in broker.audit(after_seq) if e.event == "login"] == ["scim.user_inactive"]
