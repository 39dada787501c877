"""``broker dev`` (``broker.cli.dev``, ``broker.devmode``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import boto3
import httpx
import pyotp

from tests.support.cli import ROOT
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import broker_env, free_port, spawned, wait_for_port


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
