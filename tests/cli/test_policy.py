"""``broker policy explain`` (``broker.cli.policy``)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.cli import broker
from tests.support.processes import broker_env


def test_policy_explain_json_needs_no_database(tmp_path: Path) -> None:
    result = broker(
        "policy",
        "explain",
        "-c",
        "config/dev.yaml",
        "--store",
        "breakglass",
        "--subject",
        "demo",
        "--email",
        "demo@example.test",
        "--group",
        "engineering",
        "--mfa",
        "mfa",
        "--role",
        "dev-readonly",
        "--json",
        env=broker_env(BROKER_DATABASE_URL=f"sqlite:///{tmp_path}/absent.db"),
    )
    assert result.returncode == 0, result.stderr
    (role,) = json.loads(result.stdout)["roles"]
    assert role["usable"] and role["sts"]["tags"] == {"Email": "demo@example.test"}
    assert role["sts"]["source_identity"] == "demo@example.test" and role["sts"]["duration_seconds"] == 3600
    assert not (tmp_path / "absent.db").exists()
    unknown = broker("policy", "explain", "-c", "config/dev.yaml", "--store", "x", "--subject", "y", "--role", "nope")
    assert unknown.returncode == 2 and "No role named 'nope'" in unknown.stderr
