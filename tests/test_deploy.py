"""What deploy/ ships stays consistent with the broker it deploys: the Kubernetes manifests, the Prometheus
alert rules (checked and unit-tested by promtool) and the Grafana dashboard."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.settings import load_settings
from tests.support.observed_broker import metric_names, observed_broker, wait_for

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "kubernetes"


def manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and "kind" in doc and doc["kind"] != "Kustomization":
                found[doc["kind"]] = doc
    return found


def test_deployment_is_replicated_probed_and_reads_secrets() -> None:
    docs = manifests()
    deployment = docs["Deployment"]
    assert deployment["spec"]["replicas"] >= 2
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"secretRef": {"name": "broker-secrets"}} in container["envFrom"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert docs["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1
    assert docs["Service"]["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    job = docs["Job"]["spec"]["template"]["spec"]["containers"][0]
    assert job["command"][:3] == ["broker", "db", "upgrade"]


def test_configmap_broker_yaml_is_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = yaml.safe_load(manifests()["ConfigMap"]["data"]["broker.yaml"])
    monkeypatch.setenv("OIDC_CLIENT_SECRET", "from-the-secret")
    settings = load_settings(
        None, **config, secret_key="k8s-secret-from-the-Secret-0123456789abcdef", database_url="sqlite://"
    )
    assert settings.rate_limits.storage_url.startswith("redis://")
    assert settings.server.forwarded_allow_ips


PROMETHEUS = DEPLOY.parent / "prometheus"
DASHBOARD = DEPLOY.parent / "grafana" / "broker.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is missing: `make system-deps` installs Debian's prometheus package"
    return subprocess.run(["promtool", *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)


def test_alert_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_alert_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "alerts.test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_alert_unit_tests_can_fail(tmp_path: Path) -> None:
    # The same unit tests against rules whose threshold is off must fail: the tests check what fires.
    broken = (PROMETHEUS / "alerts.yml").read_text().replace("< 14 * 86400", "< 1 * 86400")
    (tmp_path / "alerts.yml").write_text(broken)
    shutil.copy(PROMETHEUS / "alerts.test.yml", tmp_path / "alerts.test.yml")
    result = subprocess.run(
        ["promtool", "test", "rules", "alerts.test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "BrokerCertificateExpiringSoon" in result.stdout + result.stderr


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names used by each shipped rule and dashboard expression."""
    exprs: dict[str, list[str]] = {"alerts.yml": [], "broker.json": []}
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    exprs["alerts.yml"] = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs["broker.json"] = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs["broker.json"] += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    names = re.compile(r"\b(broker_[a-z0-9_]+)")
    return {source: {n for e in found for n in names.findall(e)} for source, found in exprs.items()}


def test_dashboard_and_rules_reference_only_exported_metrics(tmp_path: Path, sts_endpoint: str) -> None:
    referenced = referenced_metrics()
    assert len(referenced["alerts.yml"]) >= 7 and len(referenced["broker.json"]) >= 9
    with observed_broker(tmp_path, sts_endpoint, tls=True) as broker:
        broker.get("/healthz")
        wait_for(lambda: "broker_audit_last_seal_pass_timestamp_seconds" in metric_names(broker.get("/metrics").text))
        exported = metric_names(broker.get("/metrics").text)
    for source, names in referenced.items():
        assert names <= exported, f"{source} uses metrics the broker does not export: {sorted(names - exported)}"


def test_grace_period_covers_prestop_and_drain() -> None:
    from broker.cli.server import GRACEFUL_SHUTDOWN_SECONDS

    spec = manifests()["Deployment"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    prestop = int(command[1])
    assert prestop >= 5
    assert spec["terminationGracePeriodSeconds"] >= prestop + GRACEFUL_SHUTDOWN_SECONDS + 5
