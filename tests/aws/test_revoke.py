"""Targeted revocation against moto's IAM and STS with authentication enforced.

What the emulator supports, and what these tests therefore assert against it:

* moto evaluates a role's inline policies for requests signed with assumed-role credentials, so after a
  revocation the revoked person's credentials are refused (asserted).
* moto ignores the statement's conditions (``DateLessThan aws:TokenIssueTime``, ``StringEquals
  aws:SourceIdentity``: it implements only ``StringEquals`` on request parameters such as ``sts:ExternalId``),
  so in moto the deny applies to *every* session of the role, including user B's. That limitation is pinned
  below so the documentation stays true; in AWS the conditions confine the deny to A's sessions issued before
  the revocation. What the broker controls is asserted exactly: the policy document (A's SourceIdentity, the
  revocation time, no mention of B) and B's issuance left unrevoked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from broker.aws.revoke import POLICY_NAME, DenyStatement, compact, iso
from broker.aws.sts import Sts
from broker.context import Context
from broker.identity import Channel, Credentials, Identity, MfaEvidence, MfaLevel
from broker.revocation import Actor
from broker.services import build_services
from broker.settings import load_settings
from broker.store import queries
from tests.support.processes import moto_server

ACCOUNT = "123456789012"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/Deploy"
CTX = Context(client_ip="127.0.0.1")


def person(name: str) -> Identity:
    return Identity(
        subject=f"u-{name}",
        issuer="https://idp.example.test",
        store="corp",
        username=name,
        email=f"{name}@example.test",
        groups=frozenset({"engineering"}),
        mfa=MfaEvidence(level=MfaLevel.MFA),
    )


ALICE, BOB = person("alice"), person("bob")


@pytest.fixture
def iam_world() -> Iterator[dict[str, str]]:
    """moto with authentication enforced, an IAM user for the broker and a role it may assume and revoke."""
    with moto_server(enforce_auth=True) as endpoint:
        # Set-up runs unauthenticated (moto's reset-auth), then enforcement goes back on for the test.
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"inf").raise_for_status()
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
        iam.create_user(UserName="broker")
        key = iam.create_access_key(UserName="broker")["AccessKey"]
        broker_policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                    "Resource": "*",
                },
                {
                    "Effect": "Allow",
                    "Action": ["iam:GetRole", "iam:GetRolePolicy", "iam:PutRolePolicy"],
                    "Resource": "*",
                },
            ],
        }
        iam.put_user_policy(UserName="broker", PolicyName="broker", PolicyDocument=json.dumps(broker_policy))
        trust = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:user/broker"},
                    "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                }
            ],
        }
        iam.create_role(RoleName="Deploy", AssumeRolePolicyDocument=json.dumps(trust), MaxSessionDuration=3600)
        work = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "iam:ListRoles", "Resource": "*"}]}
        iam.put_role_policy(RoleName="Deploy", PolicyName="work", PolicyDocument=json.dumps(work))
        httpx.post(f"{endpoint}/moto-api/reset-auth", content=b"0").raise_for_status()
        yield {"endpoint": endpoint, "key_id": key["AccessKeyId"], "secret": key["SecretAccessKey"]}


def can_list_roles(endpoint: str, creds: Credentials) -> bool:
    client = boto3.client(
        "iam",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
    )
    try:
        client.list_roles()
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "AccessDenied"
        return False
    return True


def test_revoking_a_person_denies_their_credentials(
    iam_world: dict[str, str], make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = iam_world["endpoint"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", iam_world["key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", iam_world["secret"])
    config = make_config(
        roles=[{"name": "deploy", "role_arn": ROLE_ARN, "grant": [{"groups": ["engineering"]}], "mfa": "mfa"}]
    )
    config["aws"] = {**config["aws"], "sts_endpoint_url": endpoint}
    settings = load_settings(None, **config)
    services = build_services(settings, sts=Sts(settings.aws))
    db, broker, ops = services.db, services.issuance, services.operations
    try:
        a = broker.issue(ALICE, role="deploy", channel=Channel.CLI, ctx=CTX)
        b = broker.issue(BOB, role="deploy", channel=Channel.CLI, ctx=CTX)
        assert can_list_roles(endpoint, a.credentials) and can_list_roles(endpoint, b.credentials)

        before = datetime.now(UTC).replace(microsecond=0)
        outcome = ops.revocations.revoke_principal(
            Actor.operator("ops@host"), "alice@example.test", reason="INC-7", ctx=CTX
        )
        after = datetime.now(UTC)
        assert outcome.aws_applied == [ROLE_ARN] and outcome.aws_failed == []
        assert outcome.issuances == [a.issuance_id]

        # The broker's statement: A's SourceIdentity, cut off at the revocation time, nothing about B.
        iam = boto3.session.Session().client("iam", endpoint_url=endpoint, region_name="us-east-1")
        document = iam.get_role_policy(RoleName="Deploy", PolicyName=POLICY_NAME)["PolicyDocument"]
        [statement] = document["Statement"]
        assert statement["Effect"] == "Deny" and statement["Action"] == "*" and statement["Resource"] == "*"
        assert statement["Condition"]["StringEquals"] == {"aws:SourceIdentity": "alice@example.test"}
        cut = datetime.fromisoformat(
            statement["Condition"]["DateLessThan"]["aws:TokenIssueTime"].replace("Z", "+00:00")
        )
        assert before <= cut <= after
        assert "bob" not in json.dumps(document)

        # Where moto evaluates it: A's live credentials are refused.
        assert not can_list_roles(endpoint, a.credentials)
        # moto ignores the conditions, so it refuses B too (pinned: see the module docstring).
        assert not can_list_roles(endpoint, b.credentials)

        # The broker's own records: A's issuance revoked, B's untouched; one audit event names the scope.
        with db.transaction() as session:
            a_row = queries.get_issuance(session, issuance_id=a.issuance_id)
            b_row = queries.get_issuance(session, issuance_id=b.issuance_id)
            assert a_row is not None and a_row.revoked_at is not None
            assert b_row is not None and b_row.revoked_at is None
            [event] = queries.search_audit_events(session, event="revocation")
            assert (event.outcome, event.reason, event.principal) == ("ok", "revoked_principal", "operator:ops@host")
            assert event.detail["source_identities"] == ["alice@example.test"]
    finally:
        db.dispose()


def test_revocation_refused_by_iam_is_recorded_not_hidden(
    iam_world: dict[str, str], make_config: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker key without iam:PutRolePolicy: the broker still revokes its rows, and says AWS did not."""
    endpoint = iam_world["endpoint"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unknown")
    config = make_config(roles=[{"name": "deploy", "role_arn": ROLE_ARN, "grant": [{"groups": ["engineering"]}]}])
    config["aws"] = {**config["aws"], "sts_endpoint_url": endpoint}
    settings = load_settings(None, **config)
    services = build_services(settings, sts=Sts(settings.aws))
    db, ops = services.db, services.operations
    try:
        outcome = ops.revocations.revoke_role(Actor.operator("ops"), "deploy", reason="INC-8", ctx=CTX)
        assert outcome.aws_applied == []
        assert [f["role_arn"] for f in outcome.aws_failed] == [ROLE_ARN]
        with db.transaction() as session:
            [event] = queries.search_audit_events(session, event="revocation")
            assert (event.outcome, event.reason) == ("partial", "aws_not_applied")
    finally:
        db.dispose()


# ---------------------------------------------------------------- pruning (pure)

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_statement_shape_person_and_role_wide() -> None:
    person_statement = DenyStatement(NOW, "alice@example.test").to_json()
    assert person_statement["Condition"] == {
        "DateLessThan": {"aws:TokenIssueTime": "2026-12-05T12:00:00Z"},
        "StringEquals": {"aws:SourceIdentity": "alice@example.test"},
    }
    assert DenyStatement(NOW).to_json()["Condition"] == {"DateLessThan": {"aws:TokenIssueTime": iso(NOW)}}
    assert DenyStatement.from_json(person_statement) == DenyStatement(NOW, "alice@example.test")


def test_statements_older_than_the_longest_session_are_pruned() -> None:
    old = DenyStatement(NOW - 2 * HOUR, "old@example.test").to_json()
    recent = DenyStatement(NOW - HOUR / 2, "recent@example.test").to_json()
    foreign = {"Sid": "SomeoneElse", "Effect": "Deny", "Action": "s3:*", "Resource": "*"}
    merged, dropped = compact([old, recent, foreign], DenyStatement(NOW, "new@example.test"), now=NOW, max_session=HOUR)
    assert foreign in merged  # statements the broker did not write are kept as they are
    who = [DenyStatement.from_json(s).source_identity for s in merged if DenyStatement.from_json(s)]  # type: ignore[union-attr]
    assert who == ["recent@example.test", "new@example.test"]
    assert dropped == [DenyStatement(NOW - 2 * HOUR, "old@example.test")]


def test_later_statements_supersede_earlier_ones() -> None:
    first = DenyStatement(NOW - 10 * timedelta(minutes=1), "a@example.test").to_json()
    merged, _ = compact([first], DenyStatement(NOW, "a@example.test"), now=NOW, max_session=HOUR)
    assert [DenyStatement.from_json(s) for s in merged] == [DenyStatement(NOW, "a@example.test")]
    # A role-wide revocation replaces every earlier personal one.
    merged, dropped = compact(merged, DenyStatement(NOW + timedelta(seconds=5)), now=NOW, max_session=HOUR)
    assert [DenyStatement.from_json(s) for s in merged] == [DenyStatement(NOW + timedelta(seconds=5))]
    assert dropped == [DenyStatement(NOW, "a@example.test")]


def test_many_revocations_stay_under_the_inline_policy_limit() -> None:
    from broker.aws.revoke import MAX_INLINE_POLICY_CHARS, policy_size

    statements: list[Any] = []
    for minute in range(600):  # ten hours of one revocation a minute, one-hour sessions
        at = NOW + timedelta(minutes=minute)
        statements, _ = compact(
            statements, DenyStatement(at, f"user{minute % 7}@example.test"), now=at, max_session=HOUR
        )
    assert len(statements) == 7
    assert policy_size({"Version": "2012-10-17", "Statement": statements}) < MAX_INLINE_POLICY_CHARS
