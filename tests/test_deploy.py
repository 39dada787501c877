"""The Kubernetes manifests under deploy/kubernetes stay consistent with the broker they deploy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.settings import load_settings

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
