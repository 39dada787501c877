"""Just-in-time access end to end at the use-case layer: request, approval by someone else, use, the window
ending by itself, automatic revocation in IAM (moto), notifications to a real loopback webhook receiver.

Runs on SQLite and PostgreSQL, against moto's STS and IAM. Identities are built directly (the connectors that
normally build them have their own suites); everything below them is real.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from broker.aws.revoke import POLICY_NAME
from broker.aws.sts import Sts
from broker.context import Context
from broker.errors import AccessDenied, InvalidRequest, MfaRequired
from broker.identity import Channel, Identity, MfaEvidence, MfaLevel
from broker.operations import Operations
from broker.services import Services, build_services
from broker.settings import load_settings
from broker.store import queries
from broker.store.models import AuditEvent
from tests.support.webhook_receiver import WebhookReceiver

CTX = Context(client_ip="127.0.0.1", user_agent="pytest")
JIT_ARN = "arn:aws:iam::123456789012:role/ProdAdmin"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def person(name: str, groups: set[str], level: MfaLevel = MfaLevel.MFA) -> Identity:
    return Identity(
        subject=f"u-{name}",
        issuer="https://idp.example.test",
        store="corp",
        username=name,
        email=f"{name}@example.test",
        groups=frozenset(groups),
        mfa=MfaEvidence(level=level, methods=("hwk",) if level == MfaLevel.PHISHING_RESISTANT else ("mfa",)),
    )


ALICE = person("alice", {"engineering"})
LEAD = person("lead", {"leads", "engineering"}, MfaLevel.PHISHING_RESISTANT)
LEAD_WEAK = person("lead2", {"leads"}, MfaLevel.MFA)
BOB = person("bob", {"engineering"}, MfaLevel.PHISHING_RESISTANT)


def jit_role(**extra: Any) -> dict[str, Any]:
    return {
        "name": "prod-admin",
        "role_arn": JIT_ARN,
        "grant": [{"groups": ["engineering"]}],
        "mfa": "mfa",
        "max_duration_seconds": 3600,
        "requires_request": {"approvers": ["leads"], "max_duration_seconds": 3600, "request_ttl_minutes": 30},
        **extra,
    }


def ensure_role(endpoint: str, name: str) -> None:
    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:*"}]}
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "EntityAlreadyExists":
            raise


@pytest.fixture
def build(make_config: Callable[..., dict[str, Any]], sts_endpoint: str) -> Iterator[Callable[..., Services]]:
    made: list[Services] = []

    def make(clock: Clock, **overrides: Any) -> Services:
        config = make_config(**overrides)
        config["roles"] = [*config["roles"], jit_role()]
        settings = load_settings(None, **config)
        services = build_services(settings, clock=clock, sts=Sts(settings.aws))
        made.append(services)
        return services

    ensure_role(sts_endpoint, "ProdAdmin")
    yield make
    for services in made:
        services.close()


def events(ops: Operations, after: int = 0) -> list[AuditEvent]:
    with ops.db.transaction() as session:
        rows = [e for e in queries.iter_audit_events(session) if e.seq > after]
        session.expunge_all()
    return rows


def test_request_approve_use_expire_and_revoke(build: Callable[..., Services], sts_endpoint: str) -> None:
    clock = Clock()
    with WebhookReceiver() as hook:
        services = build(clock, notifications={"webhook_url": hook.url})
        ops = services.operations
        broker = services.issuance

        # No standing access: eligible, but the role needs an approved request.
        with pytest.raises(AccessDenied) as refused:
            broker.issue(ALICE, role="prod-admin", channel=Channel.CLI, ctx=CTX)
        assert refused.value.reason == "request_required"

        view = ops.elevation.request(
            ALICE, role="prod-admin", reason="INC-42 fix prod", duration_seconds=99999, ctx=CTX
        )
        assert (view.status, view.duration_seconds) == ("pending", 3600)  # capped to the role's maximum

        # Nobody approves their own request; approvers need the role's group and a phishing-resistant sign-in.
        with pytest.raises(AccessDenied) as own:
            ops.elevation.approve(ops_actor(ALICE), view.id, note=None, ctx=CTX)
        assert own.value.reason == "self_approval"
        with pytest.raises(AccessDenied) as outsider:
            ops.elevation.approve(ops_actor(BOB), view.id, note=None, ctx=CTX)
        assert outsider.value.reason == "not_an_approver"
        with pytest.raises(MfaRequired) as weak:
            ops.elevation.approve(ops_actor(LEAD_WEAK), view.id, note=None, ctx=CTX)
        assert weak.value.reason == "approver_mfa_insufficient"

        approved = ops.elevation.approve(ops_actor(LEAD), view.id, note="ok for INC-42", ctx=CTX)
        assert approved.status == "approved" and approved.decided_by == "lead@example.test"

        issued = broker.issue(ALICE, role="prod-admin", channel=Channel.CLI, ctx=CTX, duration_seconds=7200)
        assert issued.decision.grant_request_id == view.id
        assert issued.decision.duration_seconds <= 3600
        # Someone else eligible but without an approval of their own still cannot use it.
        with pytest.raises(AccessDenied):
            broker.issue(BOB, role="prod-admin", channel=Channel.CLI, ctx=CTX)

        # The window ends by itself: policy refuses at once, the sweep closes it and revokes in IAM.
        clock.advance(seconds=3601)
        with pytest.raises(AccessDenied) as ended:
            broker.issue(ALICE, role="prod-admin", channel=Channel.CLI, ctx=CTX)
        assert ended.value.reason == "request_required"
        result = ops.run_once()
        assert result["ended"] == 1
        with ops.db.transaction() as session:
            row = queries.get_access_request(session, request_id=view.id)
            assert row is not None and row.status == "ended"
            [revocation] = queries.list_revocations(session)
            assert (revocation.scope, revocation.actor) == ("grant", "system:broker")
            assert revocation.aws_applied == [JIT_ARN] and revocation.aws_failed == []

        iam = boto3.client("iam", endpoint_url=sts_endpoint, region_name="us-east-1")
        document = iam.get_role_policy(RoleName="ProdAdmin", PolicyName=POLICY_NAME)["PolicyDocument"]
        mine = [
            s
            for s in document["Statement"]
            if s["Condition"].get("StringEquals", {}).get("aws:SourceIdentity") == "alice@example.test"
        ]
        assert mine and mine[-1]["Effect"] == "Deny"

        trail = [(e.event, e.outcome, e.reason) for e in events(ops) if e.event in {"access_request", "revocation"}]
        assert ("access_request", "ok", "requested") in trail
        assert ("access_request", "denied", "self_approval") in trail
        assert ("access_request", "ok", "approved") in trail
        assert ("access_request", "ended", "grant_ended") in trail
        assert ("revocation", "ok", "revoked_grant") in trail

        # Every step reached the webhook, in Slack's shape.
        kinds = [m["event"] for m in hook.wait_for(4)]
        assert kinds == ["access_request.created", "access_request.approved", "access_request.ended", "revocation"]
        assert all(isinstance(m["text"], str) and m["text"] for m in hook.received)


def ops_actor(identity: Identity) -> Any:
    from broker.revocation import Actor

    return Actor.person(identity)


def test_unanswered_request_expires(build: Callable[..., Services]) -> None:
    clock = Clock()
    services = build(clock)
    ops = services.operations
    view = ops.elevation.request(ALICE, role="prod-admin", reason="deploy", duration_seconds=None, ctx=CTX)
    with pytest.raises(InvalidRequest) as duplicate:
        ops.elevation.request(ALICE, role="prod-admin", reason="again", duration_seconds=None, ctx=CTX)
    assert duplicate.value.reason == "request_pending"
    clock.advance(minutes=31)
    assert ops.run_once()["expired"] == 1
    with pytest.raises(InvalidRequest) as late:
        ops.elevation.approve(ops_actor(LEAD), view.id, note=None, ctx=CTX)
    assert late.value.reason == "request_not_pending"
    assert [(e.outcome, e.reason) for e in events(ops) if e.event == "access_request"][-2:] == [
        ("expired", "request_expired"),
        ("denied", "request_not_pending"),
    ]


def test_request_refusals_are_audited(build: Callable[..., Services]) -> None:
    services = build(Clock())
    ops = services.operations
    outsider = person("carol", {"sales"})
    cases = [
        (
            lambda: ops.elevation.request(outsider, role="prod-admin", reason="x", duration_seconds=None, ctx=CTX),
            "request_not_eligible",
        ),
        (
            lambda: ops.elevation.request(ALICE, role="readonly", reason="x", duration_seconds=None, ctx=CTX),
            "request_not_applicable",
        ),
        (
            lambda: ops.elevation.request(ALICE, role="prod-admin", reason="  ", duration_seconds=None, ctx=CTX),
            "request_reason_invalid",
        ),
        (
            lambda: ops.elevation.request(ALICE, role="prod-admin", reason="x\u202e", duration_seconds=None, ctx=CTX),
            "request_reason_invalid",
        ),
    ]
    for call, reason in cases:
        before = events(ops)[-1].seq if events(ops) else 0
        with pytest.raises((AccessDenied, InvalidRequest)) as info:
            call()
        assert info.value.reason == reason
        assert [(e.event, e.outcome, e.reason) for e in events(ops, before)] == [("access_request", "denied", reason)]


def test_requester_can_end_a_window_early(build: Callable[..., Services]) -> None:
    services = build(Clock())
    ops = services.operations
    view = ops.elevation.request(ALICE, role="prod-admin", reason="short job", duration_seconds=1800, ctx=CTX)
    ops.elevation.approve(ops_actor(LEAD), view.id, note=None, ctx=CTX)
    services.issuance.issue(ALICE, role="prod-admin", channel=Channel.CLI, ctx=CTX)
    ended = ops.elevation.cancel(ALICE, view.id, ctx=CTX)
    assert ended.status == "ended"
    with pytest.raises(AccessDenied):
        services.issuance.issue(ALICE, role="prod-admin", channel=Channel.CLI, ctx=CTX)
    with ops.db.transaction() as session:
        [issuance] = queries.find_issuances(session, role_name="prod-admin")
        assert issuance.revoked_at is not None


def test_webhook_failures_are_retried_then_audited_and_never_block(build: Callable[..., Services]) -> None:
    clock = Clock()
    with WebhookReceiver(status=500) as hook:
        services = build(clock, notifications={"webhook_url": hook.url, "max_attempts": 2, "retry_base_seconds": 60})
        ops = services.operations
        # The request itself succeeds at once: the notification only waits in the outbox.
        view = ops.elevation.request(ALICE, role="prod-admin", reason="deploy", duration_seconds=None, ctx=CTX)
        assert view.status == "pending" and hook.attempts == 0
        ops.notifier.deliver_due()
        assert hook.attempts == 1
        ops.notifier.deliver_due()
        assert hook.attempts == 1  # backing off
        clock.advance(seconds=61)
        ops.notifier.deliver_due()
        assert hook.attempts == 2
        with ops.db.transaction() as session:
            [delivery] = queries.list_deliveries(session)
            assert (delivery.status, delivery.attempts, delivery.last_error) == ("failed", 2, "HTTP 500")
        [failed] = [e for e in events(ops) if e.event == "webhook.failed"]
        assert failed.reason == "webhook_delivery_failed"
        assert failed.detail["kind"] == "access_request.created" and failed.detail["attempts"] == 2
        assert hook.url not in json.dumps(failed.detail)  # the URL is a credential


def test_unreachable_webhook_is_a_failure_too(build: Callable[..., Services]) -> None:
    from tests.support.processes import free_port

    services = build(Clock(), notifications={"webhook_url": f"http://127.0.0.1:{free_port()}/hook", "max_attempts": 1})

    ops = services.operations
    ops.elevation.request(ALICE, role="prod-admin", reason="deploy", duration_seconds=None, ctx=CTX)
    assert ops.notifier.deliver_due() == 0
    [failed] = [e for e in events(ops) if e.event == "webhook.failed"]
    assert failed.detail["error"] == "ConnectError"
