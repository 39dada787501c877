"""Alerts and metrics from the audit trail; the access report and its CLI."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from broker.aws.sts import Sts
from broker.context import Context
from broker.errors import AccessDenied
from broker.identity import Channel, Identity, MfaEvidence, MfaLevel
from broker.services import Services, build_services
from broker.settings import load_settings
from broker.store import queries
from tests.support.observed_broker import log_lines, observed_broker, wait_for
from tests.support.webhook_receiver import WebhookReceiver


def person(name: str, groups: set[str], *, break_glass: bool = False) -> Identity:
    return Identity(
        subject=f"u-{name}",
        issuer="https://idp.example.test",
        store="corp",
        username=name,
        email=f"{name}@example.test",
        groups=frozenset(groups),
        mfa=MfaEvidence(level=MfaLevel.MFA),
        break_glass=break_glass,
    )


@pytest.fixture
def ops(make_config: Callable[..., dict[str, Any]]) -> Any:
    made: list[Services] = []

    def build(**overrides: Any) -> Services:
        settings = load_settings(None, **make_config(**overrides))
        made.append(build_services(settings, sts=Sts(settings.aws)))
        # Revocation is not under test here: no IAM client.
        made[-1].revoker = None
        return made[-1]

    yield build
    for services in made:
        services.close()


def alerts(o: Services) -> list[tuple[str | None, str]]:
    with o.db.transaction() as session:
        return [(e.principal, e.reason) for e in queries.search_audit_events(session, event="alert")][::-1]


def test_denial_burst_raises_one_alert_per_window(ops: Any) -> None:
    with WebhookReceiver() as hook:
        o = ops(notifications={"webhook_url": hook.url}, alerts={"burst_threshold": 3})
        carol = person("carol", {"sales"})
        for _ in range(5):
            with pytest.raises(AccessDenied):
                o.issuance.issue(carol, role="readonly", channel=Channel.CLI, ctx=Context())
        o.operations.run_once()
        assert alerts(o) == [("carol@example.test", "denial_burst")]
        [message] = hook.wait_for(1)
        assert message["event"] == "alert.denial_burst" and "carol@example.test" in message["text"]
        metrics = o.metrics.render().decode()
        assert 'broker_denials_total{event="credentials",reason="role_not_granted"} 5.0' in metrics
        assert 'broker_alerts_total{rule="denial_burst"} 1.0' in metrics


def test_break_glass_and_new_network_alerts(ops: Any) -> None:
    o = ops()
    o.broker.start_session(person("bg", set(), break_glass=True), Context(client_ip="10.0.0.5"), previous_session=None)
    dana = person("dana", {"engineering"})
    o.broker.start_session(dana, Context(client_ip="10.1.0.5"), previous_session=None)  # first sign-in: the baseline
    o.broker.start_session(dana, Context(client_ip="10.1.0.77"), previous_session=None)  # same /24
    o.broker.start_session(dana, Context(client_ip="203.0.113.9"), previous_session=None)  # new network
    o.operations.run_once()
    assert alerts(o) == [("bg@example.test", "break_glass_used"), ("dana@example.test", "new_network")]


def test_outside_allowed_hours_is_refused_by_policy_and_alerted(ops: Any) -> None:
    hour = datetime.now(UTC).hour
    closed = {"timezone": "UTC", "start_hour": (hour + 2) % 24, "end_hour": (hour + 2) % 24 + 1}
    o = ops(
        roles=[
            {
                "name": "readonly",
                "role_arn": "arn:aws:iam::123456789012:role/ReadOnly",
                "grant": [{"groups": ["engineering"]}],
                "allowed_hours": closed,
            }
        ]
    )
    with pytest.raises(AccessDenied) as refused:
        o.issuance.issue(person("erin", {"engineering"}), role="readonly", channel=Channel.CLI, ctx=Context())
    assert refused.value.reason == "outside_allowed_hours"
    o.operations.run_once()
    assert alerts(o) == [("erin@example.test", "outside_allowed_hours")]


def test_access_report_and_cli(ops: Any, make_config: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    o = ops()
    eng = person("eve", {"engineering"})
    idle = person("ian", {"engineering"})
    o.broker.start_session(idle, Context(), previous_session=None)
    o.issuance.issue(eng, role="readonly", channel=Channel.CLI, ctx=Context())
    o.issuance.issue(eng, role="readonly", channel=Channel.CLI, ctx=Context())
    report = o.operations.report(days=30)
    readonly = next(r for r in report["roles"] if r["role"] == "readonly")
    assert readonly["access"] == "standing" and readonly["rules"] == ["groups=engineering"]
    assert readonly["granted_to"] == ["eve@example.test", "ian@example.test"]
    assert readonly["used_by"]["eve@example.test"]["issuances"] == 2
    assert readonly["unused_grants"] == ["ian@example.test"]

    config = tmp_path / "broker.yaml"
    config.write_text(yaml.safe_dump(make_config()))
    from broker.cli import app

    runner = CliRunner()
    as_json = runner.invoke(app, ["access-report", "-c", str(config), "--days", "30", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout)["roles"][0]["used_by"]["eve@example.test"]["issuances"] == 2
    as_csv = runner.invoke(app, ["access-report", "-c", str(config), "--format", "csv"])
    assert "readonly,standing,ian@example.test,True,0,,unused_grant" in as_csv.stdout
    table = runner.invoke(app, ["access-report", "-c", str(config)])
    assert table.exit_code == 0 and "readonly" in table.stdout

    # Operator changes through the CLI are audited as the operator.
    revoked = runner.invoke(
        app, ["revoke", "principal", "eve@example.test", "-r", "INC-3", "-c", str(config), "--as", "oncall"]
    )
    assert revoked.exit_code in (0, 1), revoked.output  # 1 when AWS did not take the deny (said on stderr)
    with o.db.transaction() as session:
        [event] = queries.search_audit_events(session, event="revocation")
        assert (event.principal, event.store) == ("operator:oncall", "cli")
        assert event.detail["issuances"] and event.detail["sessions"] == 0


def test_serve_with_two_workers_sums_metrics_and_reports_redis_fallback(tmp_path: Path, sts_endpoint: str) -> None:
    with observed_broker(tmp_path, sts_endpoint) as broker:
        # Both workers have started (each audits config.loaded) before the counts are compared.
        assert wait_for(lambda: broker.metrics().get("broker_audit_append_duration_seconds_count", 0) >= 2)
        for _ in range(30):
            assert broker.get("/healthz").status_code == 200
        assert broker.get("/no/such/page/12345").status_code == 404
        before = broker.metrics()
        # Every worker's requests, summed: whichever worker answers /metrics counts all 30.
        assert before['broker_http_requests_total{method="GET",route="/healthz",status="200"}'] == 30
        # Unmatched paths share one label value: clients cannot grow the series count.
        assert before['broker_http_requests_total{method="GET",route="unmatched",status="404"}'] == 1
        assert not any("12345" in name for name in before)
        assert before['broker_http_request_duration_seconds_bucket{le="+Inf",method="GET",route="/healthz"}'] == 30
        assert 'broker_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/healthz"}' in before
        assert before["broker_db_query_duration_seconds_count"] > 0
        assert before["broker_audit_append_duration_seconds_count"] >= 2  # config.loaded, once per worker
        assert before["broker_ratelimit_storage_fallback"] == 0
        (build,) = [name for name in before if name.startswith("broker_build_info{")]
        assert 'version="0.1.0"' in build and before[build] == 1

        # Redis goes away: rate-limited routes count in-process, and the gauge says so.
        broker.redis.cut()
        statuses = [
            broker.post("/oauth2/token", data={"grant_type": "client_credentials"}).status_code for _ in range(4)
        ]
        assert statuses[0] == 400  # counted locally: the limit still holds, no refusal for the first request
        assert broker.metrics()["broker_ratelimit_storage_fallback"] == 1

        # Redis comes back: after the retry delay, shared counting resumes in every worker that fell back.
        broker.redis.restore()
        time.sleep(5.5)

        def recovered() -> bool:
            broker.post("/oauth2/token", data={"grant_type": "client_credentials"})
            return broker.metrics()["broker_ratelimit_storage_fallback"] == 0

        assert wait_for(recovered, timeout=30)
    lines = log_lines(broker.server.output)
    events = [line["event"] for line in lines]
    assert "rate limit storage unreachable; counting in this process" in events
    assert "rate limit storage reachable again; counting shared across processes" in events
    workers = {line["pid"] for line in lines if line.get("event") == "request" and line.get("path") == "/healthz"}
    assert len(workers) == 2, "the requests reached one worker only: the sum above proves nothing"
