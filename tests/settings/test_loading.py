"""load_settings and `broker config check`: every problem at once, each with its YAML path."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker.identity import MfaLevel
from broker.settings import load_settings
from tests.support.config_files import GOOD_SECRET, ROOT, good, problems, run_cli, write


def test_good_config_loads_with_secure_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, good()))
    assert settings.mode == "production"
    assert settings.roles[0].mfa == MfaLevel.MFA  # MFA is required unless a role says otherwise
    assert settings.session.cookie_secure
    assert settings.secret_key.get_secret_value() == GOOD_SECRET
    assert GOOD_SECRET not in repr(settings)


def test_every_problem_is_reported_at_once_with_its_path(tmp_path: Path) -> None:
    data = good()
    data["secret_key"] = "change-me"
    data["roles"] = [
        {"name": "no-grant", "role_arn": "arn:aws:iam::123456789012:role/A", "grant": []},
        {"name": "bad-arn", "role_arn": "arn:aws:s3:::bucket", "grant": [{"groups": ["x"]}]},
        {
            "name": "admin",
            "role_arn": "arn:aws:iam::123456789012:role/B",
            "grant": [{"groups": ["x"]}],
            "session_policy": {"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]},
        },
        {
            "name": "long",
            "role_arn": "arn:aws:iam::123456789012:role/C",
            "grant": [{"groups": ["x"]}],
            "max_duration_seconds": 99999,
        },
        {"name": "typo", "role_arn": "arn:aws:iam::123456789012:role/D", "grant": [{"group": ["x"]}]},
        {"name": "empty-rule", "role_arn": "arn:aws:iam::123456789012:role/E", "grant": [{}]},
        {"name": "weak", "role_arn": "arn:aws:iam::123456789012:role/F", "grant": [{"groups": ["x"]}], "mfa": "sms"},
        {"name": "weak", "role_arn": "arn:aws:iam::123456789012:role/G", "grant": [{"stores": ["corp"]}]},
    ]
    found = problems(tmp_path, data)
    assert "placeholder" in found["secret_key"]
    assert "at least 1" in found["roles[0].grant"]
    assert "IAM role ARN" in found["roles[1].role_arn"]
    assert "allow_admin" in found["roles[2]"]
    assert "43200" in found["roles[3].max_duration_seconds"]
    assert "roles[4].grant[0].group" in found  # unknown keys are errors, not silently ignored
    assert "condition" in found["roles[5].grant[0]"]
    assert "none, mfa, phishing_resistant" in found["roles[6].mfa"]
    # Cross-section checks run in the same pass as the field errors, each with its own path.
    assert found["roles[7].name"] == "'weak' is already used by roles[6]"
    assert found["roles[7].grant[0].stores[0]"] == "unknown identity store 'corp'"
    assert len(found) == 10


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("BROKER_AWS__REGION", "eu-west-1")
    settings = load_settings(write(tmp_path, good() | {"database_url": "sqlite:///here.db"}))
    assert settings.database_url == "sqlite:///elsewhere.db"
    assert settings.aws.region == "eu-west-1"


def test_config_check_command_lists_problems_and_exits_non_zero(tmp_path: Path) -> None:
    data = good() | {"secret_key": "change-me", "scim": {"clients": [{"name": "okta", "store": "nowhere"}]}}
    data["roles"][0]["grant"] = []
    data["discovery"] = {"fallback_store": "missing"}
    result = run_cli("config", "check", str(write(tmp_path, data)))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert "  secret_key: is a placeholder" in "\n".join(lines)
    assert any(line.startswith("  roles[0].grant: ") for line in lines)
    assert any(line.startswith("  scim.clients[0].token_hash: ") for line in lines)
    # The cross-checks are printed in the same run as the field errors.
    assert "  scim.clients[0].store: unknown identity store 'nowhere'" in lines
    assert "  discovery.fallback_store: unknown identity store 'missing'" in lines
    assert "change-me" not in result.stderr + result.stdout  # the refused secret is not echoed


def test_config_check_command_accepts_the_shipped_examples() -> None:
    assert run_cli("config", "check", "config/dev.yaml").returncode == 0


def test_config_check_command_accepts_the_production_example(tmp_path: Path) -> None:
    from broker.connectors.local import hash_password

    hash_file = tmp_path / "bg.hash"
    hash_file.write_text(hash_password("a-long-break-glass-password"))
    example = (ROOT / "config/broker.yaml").read_text().replace("/run/secrets/breakglass-1.hash", str(hash_file))
    path = tmp_path / "prod.yaml"
    path.write_text(example)
    env = {"BROKER_SECRET_KEY": GOOD_SECRET, "BREAKGLASS_1_TOTP": "JBSWY3DPEHPK3PXP"}
    result = run_cli("config", "check", str(path), env=env)
    assert result.returncode == 0, result.stderr
    assert "2 role(s)" in result.stdout
