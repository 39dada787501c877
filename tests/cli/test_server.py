"""``broker config check``, ``broker hash-password`` and readiness after ``broker db`` (``broker.cli.server``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import yaml
from sqlalchemy import text

from broker.store.db import Database
from tests.conftest import SECRET
from tests.support.cli import ROOT, broker
from tests.support.processes import broker_env


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
