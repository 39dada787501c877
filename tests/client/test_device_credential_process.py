"""The real AWS CLI on a device: ``credential_process = broker device credential-process --cert --key --chain``.

The broker runs on a real socket with a ``type: x509`` store; the AWS CLI runs ``sts get-caller-identity``
against moto's STS with the credentials the helper printed, and a second call is served from the encrypted
cache (no second issuance).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.support.devices import ROLE, DeviceBroker, DeviceWorld, device_world
from tests.support.processes import LiveServer

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sts_endpoint: str) -> Iterator[DeviceWorld]:
    with device_world(tmp_path_factory.mktemp("pki"), sts_endpoint) as world:
        yield world


@pytest.fixture
def broker(make_config: Callable[..., dict[str, Any]], db_url: str, world: DeviceWorld) -> Iterator[DeviceBroker]:
    config = world.config(make_config())
    config["public_url"] = "http://127.0.0.1:8000"
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield DeviceBroker(server.url, db_url, world)


def device_shell(tmp_path: Path, world: DeviceWorld, broker: DeviceBroker, cn: str) -> dict[str, str]:
    """A gateway: its certificate, key and chain on disk, an AWS CLI profile using the helper."""
    device = world.revoked if cn == "revoked" else world.hierarchy.device(cn)
    cert, key = device.write(tmp_path, cn)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(world.hierarchy.intermediate.pem)
    config = tmp_path / "aws" / "config"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        "[profile edge]\nregion = us-east-1\n"
        f"credential_process = {BIN / 'broker'} device credential-process --cert {cert} --key {key} "
        f"--chain {chain} --role {ROLE} --url {broker.url}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "BROKER_"))}
    env.update(
        BROKER_CLIENT_HOME=str(tmp_path / "helper"),
        BROKER_CLIENT_KEYRING="file",
        AWS_CONFIG_FILE=str(config),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "aws" / "credentials"),
        AWS_ENDPOINT_URL_STS=world.sts_proxy.url,
        PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    return env


def aws(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "aws"), *args, "--profile", "edge"], env=env, capture_output=True, text=True, timeout=120, cwd=ROOT
    )


def test_aws_cli_uses_device_credentials(broker: DeviceBroker, world: DeviceWorld, tmp_path: Path) -> None:
    env = device_shell(tmp_path, world, broker, "gw-41")
    first = aws(env, "sts", "get-caller-identity")
    assert first.returncode == 0, first.stderr
    who = json.loads(first.stdout)
    assert who["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/EdgeTelemetry/")
    second = aws(env, "sts", "get-caller-identity")
    assert second.returncode == 0, second.stderr
    # One sign-in: the second call came from the helper's encrypted cache.
    assert len(broker.issuances()) == 1
    [cached] = list((tmp_path / "helper" / "cache").glob("*.cred"))
    assert b"AccessKeyId" not in cached.read_bytes()


def test_aws_cli_with_a_revoked_certificate(broker: DeviceBroker, world: DeviceWorld, tmp_path: Path) -> None:
    env = device_shell(tmp_path, world, broker, "revoked")
    before = broker.last_seq()
    result = aws(env, "sts", "get-caller-identity")
    assert result.returncode != 0
    assert "invalid_grant" in result.stderr and "revoked" in result.stderr
    assert "PRIVATE KEY" not in result.stderr
    assert broker.issuances() == []
    [event] = broker.audit(after=before)
    assert event.reason == "x509.revoked"
