"""Typed configuration: every problem at once, with its YAML path; unsafe settings refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from broker.errors import ConfigError
from broker.identity import MfaLevel
from broker.settings import load_settings

GOOD_SECRET = "a-real-secret-value-with-enough-entropy-0123456789"
ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def good() -> dict[str, Any]:
    return {
        "public_url": "https://broker.example.com",
        "secret_key": GOOD_SECRET,
        "roles": [
            {"name": "ro", "role_arn": "arn:aws:iam::123456789012:role/ReadOnly", "grant": [{"groups": ["eng"]}]}
        ],
    }


def problems(tmp_path: Path, data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, data))
    return dict(info.value.problems)


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
    assert len(found) >= 8


def test_admin_policy_is_accepted_when_marked(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["session_policy"] = {"Statement": [{"Effect": "Allow", "Action": ["*"], "Resource": "*"}]}
    data["roles"][0]["allow_admin"] = True
    assert load_settings(write(tmp_path, data)).roles[0].allow_admin


def test_administrator_access_policy_arn_needs_allow_admin(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["policy_arns"] = ["arn:aws:iam::aws:policy/AdministratorAccess"]
    assert "allow_admin" in problems(tmp_path, data)["roles[0]"]


def test_placeholder_secret_is_fine_in_dev_mode(tmp_path: Path) -> None:
    data = good() | {"mode": "dev", "secret_key": "dev-only-placeholder"}
    assert load_settings(write(tmp_path, data)).dev


def test_short_secret_refused_outside_dev(tmp_path: Path) -> None:
    assert "at least 32" in problems(tmp_path, good() | {"secret_key": "x" * 10})["secret_key"]


def test_secret_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_BROKER_KEY", GOOD_SECRET)
    assert (
        load_settings(write(tmp_path, good() | {"secret_key": "env:MY_BROKER_KEY"})).secret_key.get_secret_value()
        == GOOD_SECRET
    )
    secret_file = tmp_path / "key"
    secret_file.write_text(GOOD_SECRET + "\n")
    assert (
        load_settings(write(tmp_path, good() | {"secret_key": f"file:{secret_file}"})).secret_key.get_secret_value()
        == GOOD_SECRET
    )
    found = problems(tmp_path, good() | {"secret_key": "env:NOT_SET_ANYWHERE"})
    assert "NOT_SET_ANYWHERE is not set" in found["secret_key"]


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROKER_DATABASE_URL", "sqlite:///elsewhere.db")
    monkeypatch.setenv("BROKER_AWS__REGION", "eu-west-1")
    settings = load_settings(write(tmp_path, good() | {"database_url": "sqlite:///here.db"}))
    assert settings.database_url == "sqlite:///elsewhere.db"
    assert settings.aws.region == "eu-west-1"


def test_plain_http_public_url_needs_insecure_cookies_outside_dev(tmp_path: Path) -> None:
    found = problems(tmp_path, good() | {"public_url": "http://broker.example.com"})
    assert "https" in found["(top level)"]


def test_grant_rule_naming_unknown_store_is_refused(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["grant"] = [{"stores": ["nowhere"]}]
    assert "unknown identity store 'nowhere'" in problems(tmp_path, data)["(top level)"]


def test_local_account_needs_argon2id_hash(tmp_path: Path) -> None:
    data = good() | {
        "identity_stores": [
            {
                "type": "local",
                "name": "bg",
                "accounts": [{"username": "x", "password_hash": "plaintext", "totp_secret": "JBSWY3DPEHPK3PXP"}],
            }
        ]
    }
    assert "argon2id" in problems(tmp_path, data)["identity_stores[0].accounts[0].password_hash"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=60
    )


def test_config_check_command_lists_problems_and_exits_non_zero(tmp_path: Path) -> None:
    data = good() | {"secret_key": "change-me"}
    data["roles"][0]["grant"] = []
    result = run_cli("config", "check", str(write(tmp_path, data)))
    assert result.returncode == 2
    assert "secret_key" in result.stderr and "roles[0].grant" in result.stderr
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
    result = subprocess.run(
        [sys.executable, "-m", "broker.cli", "config", "check", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env={**__import__("os").environ, **env},
    )
    assert result.returncode == 0, result.stderr
    assert "2 role(s)" in result.stdout


def test_audit_anchor_problems_are_reported_at_once(tmp_path: Path) -> None:
    rsa = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "rsa.pem").write_text(rsa)
    data = good() | {
        "audit": {
            "seal_interval_seconds": 0,
            "anchor": {"signing_key": f"file:{tmp_path / 'rsa.pem'}", "directory": str(tmp_path / "digests")},
        }
    }
    found = problems(tmp_path, data)
    assert "greater than 0" in found["audit.seal_interval_seconds"]
    assert "must be an Ed25519 key" in found["audit.anchor.signing_key"]
    unsigned = problems(tmp_path, good() | {"audit": {"anchor": {"directory": str(tmp_path)}}})
    assert "directory or s3 needs signing_key" in unsigned["audit.anchor"]
    checked = subprocess.run(
        [sys.executable, "-m", "broker.cli", "config", "check", str(write(tmp_path, data))],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert checked.returncode == 2
    assert "audit.anchor.signing_key" in checked.stderr and "audit.seal_interval_seconds" in checked.stderr


def test_audit_anchor_with_an_ed25519_key_loads(tmp_path: Path) -> None:
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "anchor.pem").write_text(key)
    anchor = {"signing_key": f"file:{tmp_path / 'anchor.pem'}", "s3": {"bucket": "audit-digests"}}
    settings = load_settings(write(tmp_path, good() | {"audit": {"anchor": anchor}}))
    assert settings.audit.anchor.enabled and settings.audit.seal_window_seconds == 31
    assert settings.audit.anchor.s3 is not None and settings.audit.anchor.s3.lock_mode == "COMPLIANCE"
