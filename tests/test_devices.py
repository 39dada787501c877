"""``broker revoke certificate`` and ``broker revoke device``: the certificate is refused from then on and the
device's live AWS sessions end through the ordinary revocation path (an inline deny policy on the role in
moto's IAM), on SQLite and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from broker.app import create_app
from broker.aws.revoke import POLICY_NAME
from broker.settings import load_settings
from tests.support.broker_process import ROOT, write_config
from tests.support.devices import ROLE, DeviceBroker, DeviceWorld, assertion, device_world
from tests.support.processes import LiveServer, broker_env


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sts_endpoint: str) -> Iterator[DeviceWorld]:
    iam = boto3.client("iam", endpoint_url=sts_endpoint, region_name="us-east-1")
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "*"}]}
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_role(RoleName="EdgeTelemetry", AssumeRolePolicyDocument=json.dumps(trust))
    with device_world(tmp_path_factory.mktemp("pki"), sts_endpoint) as world:
        yield world


@pytest.fixture
def running(
    make_config: Callable[..., dict[str, Any]], db_url: str, world: DeviceWorld, tmp_path: Path
) -> Iterator[tuple[DeviceBroker, Path]]:
    config = world.config(make_config())
    path = write_config(tmp_path / "broker.yaml", config)
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield DeviceBroker(server.url, db_url, world), path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args, "-c", str(config)],
        cwd=ROOT,
        env=broker_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_revoke_by_certificate_serial(running: tuple[DeviceBroker, Path], world: DeviceWorld) -> None:
    broker, config = running
    device = world.hierarchy.device("gw-51")
    assert broker.token(assertion(device)).status_code == 200
    result = cli(config, "revoke", "certificate", "--serial", device.serial_hex, "--reason", "INC-7 gateway stolen")
    assert result.returncode == 0, result.stderr
    outcome = json.loads(result.stdout)
    assert outcome["devices"] == ["edge:spiffe://corp.example/edge/gw-51"]
    [revocation] = outcome["revocations"]
    assert revocation["aws"]["applied"] == ["arn:aws:iam::123456789012:role/EdgeTelemetry"]
    assert len(revocation["issuances"]) == 1
    events = [(e.event, e.reason) for e in broker.audit()]
    assert ("revocation", "revoked_certificate") in events and ("revocation", "revoked_principal") in events
    # The live session is denied in IAM for this device's SourceIdentity...
    iam = boto3.client("iam", endpoint_url=world.sts_proxy.url, region_name="us-east-1")
    policy = iam.get_role_policy(RoleName="EdgeTelemetry", PolicyName=POLICY_NAME)["PolicyDocument"]
    assert "gw-51" in json.dumps(policy)
    # ... and the certificate cannot sign in again.
    before, sts_before = broker.last_seq(), broker.sts_calls()
    broker.refused(
        broker.token(assertion(device)),
        code="invalid_grant",
        reason="x509.revoked_by_operator",
        before=before,
        sts_before=sts_before,
        certificate=device,
        issued=1,
    )


def test_revoke_a_device_by_identity(running: tuple[DeviceBroker, Path], world: DeviceWorld) -> None:
    broker, config = running
    device = world.hierarchy.device("gw-52")
    assert broker.token(assertion(device)).status_code == 200
    result = cli(config, "revoke", "device", "gw-52", "--reason", "decommissioned")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["certificates"] == 1
    before, sts_before = broker.last_seq(), broker.sts_calls()
    broker.refused(
        broker.token(assertion(device)),
        code="invalid_grant",
        reason="x509.revoked_by_operator",
        before=before,
        sts_before=sts_before,
        certificate=device,
        issued=1,
    )


def test_revoke_a_serial_before_first_use(running: tuple[DeviceBroker, Path], world: DeviceWorld) -> None:
    broker, config = running
    device = world.hierarchy.device("gw-53")
    unknown = cli(config, "revoke", "certificate", "--serial", device.serial_hex, "--reason", "lost in transit")
    assert unknown.returncode == 1 and "certificate_unknown" in unknown.stderr
    issuer = device.certificate.issuer.rfc4514_string()
    args = ["revoke", "certificate", "--serial", device.serial_hex, "--issuer", issuer, "--reason", "lost"]
    assert cli(config, *args).returncode == 0
    before, sts_before = broker.last_seq(), broker.sts_calls()
    broker.refused(
        broker.token(assertion(device), role=ROLE),
        code="invalid_grant",
        reason="x509.revoked_by_operator",
        before=before,
        sts_before=sts_before,
        certificate=device,
    )
