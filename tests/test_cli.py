"""Operator commands as a person runs them: `broker db upgrade`, `broker audit verify|export`, `broker dev`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import boto3
import httpx
import pyotp
import yaml
from sqlalchemy import text

from broker.store.db import Database
from tests.conftest import SECRET
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import broker_env, free_port, spawned, wait_for_port

ROOT = Path(__file__).resolve().parent.parent


def broker(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env=env or broker_env(),
    )


def write_config(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "broker.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "production",
                "public_url": "https://broker.example.com",
                "database_url": db_url,
                "secret_key": SECRET,
            }
        )
    )
    return path


def test_help_reads_well() -> None:
    result = broker("--help")
    assert result.returncode == 0
    for command in ("serve", "dev", "config", "db", "audit", "hash-password"):
        assert command in result.stdout


def test_db_upgrade_then_audit_verify_and_export(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, db_url)
    upgraded = broker("db", "upgrade", "-c", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "revision 0" in upgraded.stdout
    assert broker("db", "upgrade", "-c", str(config)).returncode == 0  # idempotent

    from broker.audit import AuditTrail
    from broker.keys import Keys
    from broker.settings import load_settings

    database = Database(db_url)
    trail = AuditTrail(Keys(load_settings(config).secret_key))
    for i in range(3):
        trail.record(database, event="login", outcome="ok", reason="authenticated", principal=f"user{i}")

    verified = broker("audit", "verify", "-c", str(config))
    assert verified.returncode == 0 and "3 event(s) verified" in verified.stdout

    out = tmp_path / "audit.jsonl"
    exported = broker("audit", "export", "-c", str(config), "-o", str(out))
    assert exported.returncode == 0 and "Exported 3" in exported.stderr
    assert [json.loads(line)["principal"] for line in out.read_text().splitlines()] == ["user0", "user1", "user2"]

    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET principal = 'mallory' WHERE seq = 2"))
    database.dispose()
    broken = broker("audit", "verify", "-c", str(config))
    assert broken.returncode == 1
    assert "broken at event 2" in broken.stderr and "edited" in broken.stderr


def test_readyz_reports_a_database_that_needs_migrating(tmp_path: Path) -> None:
    from broker.app import create_app
    from broker.settings import load_settings
    from tests.support.processes import LiveServer

    settings = load_settings(None, mode="dev", secret_key="dev-only", database_url=f"sqlite:///{tmp_path}/x.db")
    from broker.store import db

    db.upgrade(settings.database_url)
    with Database(settings.database_url).engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))  # behind this release
    with LiveServer(create_app(settings)) as server:
        response = httpx.get(server.url + "/readyz")
    assert response.status_code == 503 and "broker db upgrade" in response.json()["detail"]


def test_broker_dev_runs_offline_and_break_glass_yields_working_credentials(tmp_path: Path) -> None:
    port = free_port()
    # Its own process group: `broker dev` starts moto, which must end with it however this test ends.
    with spawned(
        [sys.executable, "-m", "broker.cli", "dev", "--port", str(port), "--data-dir", str(tmp_path / "dev")],
        cwd=ROOT,
        env=broker_env(COLUMNS="200", BROKER_AWS__STS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        wait_for_port(port, process=process, timeout=60)
        banner = ""
        assert process.stdout is not None
        while "TOTP secret" not in banner or "Database" not in banner:
            banner += process.stdout.readline()
        while "code now" not in banner:
            banner += process.stdout.readline()
        assert "DEV MODE" in banner
        password = re.search(r"password:\s+(\S+)", banner)
        secret = re.search(r"TOTP secret:\s+([A-Z2-7]+)", banner)
        emulator = re.search(r"AWS emulator:\s+(http://\S+)", banner)
        assert password and secret and emulator
        with httpx.Client(base_url=f"http://localhost:{port}", timeout=30) as client:
            assert (
                login_local(
                    client,
                    store="breakglass",
                    username="demo",
                    password=password.group(1),
                    code=pyotp.TOTP(secret.group(1)).now(),
                ).status_code
                == 303
            )
            portal = client.get("/", headers={"Accept": "text/html"})
            assert "DEV MODE" in portal.text and 'data-role="dev-readonly"' in portal.text
            page = client.post(
                "/credentials",
                data={"role": "dev-readonly", "csrf": csrf_from(portal.text)},
                headers={"Accept": "text/html"},
            )
            env = env_credentials(page.text)
        caller = boto3.client(
            "sts",
            endpoint_url=emulator.group(1),
            region_name="us-east-1",
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            aws_session_token=env["AWS_SESSION_TOKEN"],
        ).get_caller_identity()
        assert caller["Arn"].endswith(":assumed-role/DevReadOnly/demo")


def test_hash_password_prints_only_the_hash_on_stdout(tmp_path: Path) -> None:
    password = "correct horse battery staple"
    prompted = subprocess.run(
        [sys.executable, "-m", "broker.cli", "hash-password"],
        input=f"{password}\n{password}\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=broker_env(COLUMNS="40"),
    )
    assert prompted.returncode == 0, prompted.stderr
    assert "Password" in prompted.stderr and "Password" not in prompted.stdout
    (line,) = prompted.stdout.splitlines()  # one line, never wrapped at the terminal width
    assert line.startswith("$argon2id$")

    scripted = subprocess.run(
        [sys.executable, "-m", "broker.cli", "hash-password", "--stdin"],
        input=password + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=broker_env(),
    )
    assert scripted.returncode == 0 and scripted.stderr == ""
    (hashed,) = scripted.stdout.splitlines()

    from argon2 import PasswordHasher

    assert PasswordHasher().verify(hashed, password)
    short = subprocess.run(
        [sys.executable, "-m", "broker.cli", "hash-password", "--stdin"],
        input="short\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=broker_env(),
    )
    assert short.returncode == 2 and short.stdout == "" and "at least 16 characters" in short.stderr


def test_config_check_lists_every_problem_in_one_pass_literally(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "mode": "production",
                "public_url": "http://broker.example.com",
                "secret_key": SECRET,
                "identity_stores": [
                    {
                        "type": "local",
                        "name": "Break_Glass",
                        "accounts": [
                            {
                                "username": "x",
                                "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA",
                                "totp_secret": "not-base32!",
                            }
                        ],
                    },
                    {
                        "type": "saml",
                        "name": "corp",
                        "idp_entity_id": "https://idp.example.com",
                        "sso_url": "https://idp.example.com/sso",
                        "certificates": ["MIIBnotacert"],
                    },
                ],
                "roles": [
                    {
                        "name": "a",
                        "role_arn": "arn:aws:iam::123456789012:role/A",
                        "grant": [{"stores": ["nowhere"]}],
                        "session_tags": {"Who": "{nosuch}"},
                    },
                    {"name": "a", "role_arn": "arn:aws:iam::123456789012:role/A", "grant": [{"groups": ["x"]}]},
                ],
            }
        )
    )
    result = broker("config", "check", str(path), env=broker_env(COLUMNS="300"))
    assert result.returncode == 2
    problems = [line.strip() for line in result.stderr.splitlines()[1:]]
    assert problems == [
        "identity_stores[0].name: String should match pattern '^[a-z0-9][a-z0-9_-]{0,62}$'",
        "identity_stores[0].accounts[0].totp_secret: must be a base32 TOTP secret of at least 16 characters "
        "(A-Z, 2-7), as authenticator apps take it",
        "identity_stores[1].certificates: certificates[0] is not an X.509 certificate (PEM, or the base64 body of one)",
        "roles[0].session_tags: session tag 'Who': unknown placeholder {nosuch}; use one of {username}, {email}, "
        "{subject}, {store}, {issuer} or {attr.NAME}",
        "roles[0].grant[0].stores[0]: unknown identity store 'nowhere'",
        "roles[1].name: 'a' is already used by roles[0]",
        "public_url: must be https:// when session.cookie_secure is true",
    ]


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
