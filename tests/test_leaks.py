"""Secrets never reach logs, audit rows, error pages or stderr, even with every logger at DEBUG."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import boto3
import httpx
import pyotp
import pytest
import yaml
from sqlalchemy import text

from broker import logs
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.connectors.local import hash_password
from broker.settings import AwsSettings
from broker.store.db import Database
from tests.conftest import base_config
from tests.support.federation_standin import FederationStandIn
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import broker_env, free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "leak-test-password-with-length"


def test_sts_debug_logging_never_prints_credentials(sts_endpoint: str, capfd: pytest.CaptureFixture[str]) -> None:
    logs.configure("DEBUG")
    for name in ("", "botocore", "boto3", "urllib3", "httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.DEBUG)  # every logger at DEBUG, on purpose
    creds = Sts(AwsSettings(sts_endpoint_url=sts_endpoint)).assume_role(
        AssumeRoleRequest(
            role_arn="arn:aws:iam::123456789012:role/ReadOnly",
            role_session_name="alice",
            source_identity="alice",
            duration_seconds=900,
            tags={},
        )
    )
    logging.getLogger("broker.test").debug("Session=%s", '{"sessionKey": "' + creds.secret_access_key + '"}')
    logging.getLogger("botocore.test").warning("<SecretAccessKey>%s</SecretAccessKey>", creds.secret_access_key)
    out, err = capfd.readouterr()
    assert creds.secret_access_key not in out + err
    assert creds.session_token not in out + err
    assert "[redacted]" in err  # the scrubber ran on the records that did pass


def test_whole_flow_at_debug_leaks_nothing(tmp_path: Path, sts_endpoint: str) -> None:
    secret = pyotp.random_base32()
    db_url = f"sqlite:///{tmp_path / 'broker.db'}"
    config: dict[str, Any] = base_config(
        db_url,
        sts_endpoint,
        log_level="DEBUG",
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": hash_password(PASSWORD),
                        "totp_secret": "env:ALICE_TOTP",
                        "email": "alice@example.com",
                        "groups": ["engineering"],
                    }
                ],
            }
        ],
    )
    with FederationStandIn(sts_endpoint) as standin:
        config["aws"]["federation_endpoint"] = standin.url
        path = tmp_path / "broker.yaml"
        path.write_text(yaml.safe_dump(config))
        env = broker_env(ALICE_TOTP=secret)
        subprocess.run(
            [sys.executable, "-m", "broker.cli", "db", "upgrade", "-c", str(path)],
            check=True,
            cwd=ROOT,
            env=env,
            capture_output=True,
            timeout=60,
        )
        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "serve", "-c", str(path), "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen: list[str] = []
        try:
            wait_for_port(port, process=server)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                totp = pyotp.TOTP(secret).now()
                seen.append(totp)
                assert (
                    login_local(client, store="breakglass", username="alice", password=PASSWORD, code=totp).status_code
                    == 303
                )
                cookie = client.cookies.get("broker_session") or ""
                portal = client.get("/", headers={"Accept": "text/html"})
                page = client.post(
                    "/credentials",
                    data={"role": "readonly", "csrf": csrf_from(portal.text)},
                    headers={"Accept": "text/html"},
                )
                creds = env_credentials(page.text)
                console = client.post("/console", data={"role": "readonly", "csrf": csrf_from(portal.text)})
                signin_token = console.headers["location"].split("SigninToken=")[1]
                # A failed attempt with a secret-looking value, to exercise the error paths too.
                client.post(
                    "/login/local/breakglass", data={"username": "x", "password": PASSWORD, "totp": "1", "csrf": "bad"}
                )
                boto3.client(
                    "sts",
                    endpoint_url=sts_endpoint,
                    region_name="us-east-1",
                    aws_access_key_id=creds["AWS_ACCESS_KEY_ID"],
                    aws_secret_access_key=creds["AWS_SECRET_ACCESS_KEY"],
                    aws_session_token=creds["AWS_SESSION_TOKEN"],
                ).get_caller_identity()
        finally:
            server.send_signal(signal.SIGINT)
            out, err = server.communicate(timeout=30)
    output = out + err
    assert '"path": "/credentials"' in output  # the logs were captured: the request log is there
    database = Database(db_url)
    with database.engine.connect() as conn:
        dump = "\n".join(
            str(row)
            for table in (
                "audit_events",
                "issuances",
                "broker_sessions",
                "principals",
                "replay_guard",
                "login_requests",
            )
            for row in conn.execute(text(f"SELECT * FROM {table}"))  # noqa: S608 (fixed table names)
        )
    database.dispose()
    secrets = {
        "secret access key": creds["AWS_SECRET_ACCESS_KEY"],
        "session token": creds["AWS_SESSION_TOKEN"],
        "password": PASSWORD,
        "TOTP secret": secret,
        "session cookie": cookie,
        "sign-in token": signin_token,
        "TOTP code": seen[0],
    }
    for what, value in secrets.items():
        assert value not in output, f"{what} appears in the logs"
        if what != "TOTP code":  # six digits can occur by chance inside hashes; checked in the logs only
            assert value not in dump, f"{what} appears in the database"
    assert creds["AWS_ACCESS_KEY_ID"] in dump  # the key id (not a secret) is recorded for CloudTrail tracing
