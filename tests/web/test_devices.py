"""Mutual-TLS certificate sign-in (``POST /device/credentials``), on SQLite and PostgreSQL.

Two shapes: ``broker serve`` terminating TLS itself and asking for client certificates (a real TLS
handshake with the device's certificate and key), and a TLS-terminating proxy forwarding the verified
certificate in Envoy's or nginx's header, believed only from the proxy's TCP address (the tests connect
from 127.0.0.2 as the proxy and from 127.0.0.1 as anyone else).
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from broker.app import create_app
from broker.settings import load_settings
from tests.support.broker_process import ROOT, BrokerProcess, write_config
from tests.support.certificates import Issued, server_identity
from tests.support.devices import ROLE, DeviceBroker, DeviceWorld, device_world
from tests.support.processes import LiveServer, broker_env

PROXY = "127.0.0.2"
PATH = "/device/credentials"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sts_endpoint: str) -> Iterator[DeviceWorld]:
    with device_world(tmp_path_factory.mktemp("pki"), sts_endpoint) as world:
        yield world


def envoy(device: Issued, chain: list[Issued] | None = None) -> str:
    """Envoy's x-forwarded-client-cert with forward_client_cert_details SANITIZE_SET, Cert and Chain set."""
    pem = device.pem + b"".join(c.pem for c in chain or [])
    return f'Hash=abc;Cert="{quote(device.pem.decode(), safe="")}";Chain="{quote(pem.decode(), safe="")}"'


def nginx(device: Issued) -> str:
    """nginx's $ssl_client_escaped_cert: the URL-encoded PEM."""
    return quote(device.pem.decode(), safe="")


# ---------------------------------------------------------------- behind a proxy


@pytest.fixture
def proxied(make_config: Callable[..., dict[str, Any]], db_url: str, world: DeviceWorld) -> Iterator[DeviceBroker]:
    config = world.config(make_config())
    config["devices"] = {
        "trusted_proxies": [
            {"addresses": [f"{PROXY}/32"], "format": "envoy"},
            {"addresses": [f"{PROXY}/32"], "format": "nginx", "header": "X-SSL-Client-Cert"},
        ]
    }
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield DeviceBroker(server.url, db_url, world)


def post(broker: DeviceBroker, headers: dict[str, str], *, source: str = PROXY, role: str = ROLE) -> httpx.Response:
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=30) as client:
        return client.post(broker.url + PATH, data={"role": role}, headers=headers)


def test_envoy_forwarded_certificate(proxied: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-21")
    before = proxied.last_seq()
    response = post(proxied, {"x-forwarded-client-cert": envoy(device, [world.hierarchy.intermediate])})
    assert response.status_code == 200, response.text
    assert response.json()["aws_credentials"]["AccessKeyId"]
    [event] = proxied.audit(after=before)
    assert event.reason == "issued"
    assert event.detail["device"]["proof"] == "forwarded:envoy"
    assert event.detail["device"]["tcp_peer"] == PROXY
    assert event.detail["device"]["fingerprint"] == device.fingerprint


def test_nginx_forwarded_certificate(proxied: DeviceBroker, world: DeviceWorld) -> None:
    response = post(proxied, {"X-SSL-Client-Cert": nginx(world.hierarchy.device("gw-22"))})
    assert response.status_code == 200, response.text


def test_forwarded_header_from_an_address_that_is_not_a_proxy(proxied: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-23")
    before, sts_before = proxied.last_seq(), proxied.sts_calls()
    response = post(proxied, {"x-forwarded-client-cert": envoy(device)}, source="127.0.0.1")
    proxied.refused(
        response,
        code="access_denied",
        reason="x509.forwarded_untrusted_peer",
        status=403,
        before=before,
        sts_before=sts_before,
    )
    assert proxied.audit(after=before)[0].detail["tcp_peer"] == "127.0.0.1"


def test_forwarded_revoked_certificate(proxied: DeviceBroker, world: DeviceWorld) -> None:
    before, sts_before = proxied.last_seq(), proxied.sts_calls()
    response = post(proxied, {"x-forwarded-client-cert": envoy(world.revoked)})
    proxied.refused(
        response,
        code="invalid_grant",
        reason="x509.revoked",
        before=before,
        sts_before=sts_before,
        certificate=world.revoked,
    )


def test_forwarded_header_naming_several_clients(proxied: DeviceBroker, world: DeviceWorld) -> None:
    one, two = world.hierarchy.device("gw-24"), world.hierarchy.device("gw-25")
    before, sts_before = proxied.last_seq(), proxied.sts_calls()
    response = post(proxied, {"x-forwarded-client-cert": envoy(one) + "," + envoy(two)})
    proxied.refused(
        response, code="invalid_request", reason="x509.ambiguous_certificate", before=before, sts_before=sts_before
    )


def test_no_certificate_at_all(proxied: DeviceBroker) -> None:
    before, sts_before = proxied.last_seq(), proxied.sts_calls()
    response = post(proxied, {}, source="127.0.0.1")
    proxied.refused(
        response,
        code="authentication_failed",
        reason="x509.no_client_certificate",
        status=401,
        before=before,
        sts_before=sts_before,
    )


# ---------------------------------------------------------------- TLS at the broker


@pytest.fixture
def tls_broker(
    make_config: Callable[..., dict[str, Any]], db_url: str, world: DeviceWorld, tmp_path: Path
) -> Iterator[tuple[DeviceBroker, Path]]:
    server_ca, cert, key = server_identity(tmp_path / "server")
    client_cas = tmp_path / "client-cas.pem"
    client_cas.write_bytes(world.hierarchy.root.pem + world.hierarchy.intermediate.pem)
    config = world.config(make_config())
    config["server"] = {"tls_cert_file": str(cert), "tls_key_file": str(key)}
    config["devices"] = {"tls_client_ca_file": str(client_cas)}
    path = write_config(tmp_path / "broker.yaml", config)
    with BrokerProcess(path, scheme="https") as process:
        yield DeviceBroker(process.url, db_url, world), server_ca


def tls_client(server_ca: Path, device: Issued | None, folder: Path) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(server_ca))
    if device is not None:
        cert, key = device.write(folder, "device")
        context.load_cert_chain(str(cert), str(key))
    return httpx.Client(verify=context, timeout=30)


def test_mutual_tls_at_the_broker(tls_broker: tuple[DeviceBroker, Path], world: DeviceWorld, tmp_path: Path) -> None:
    broker, server_ca = tls_broker
    device = world.hierarchy.device("gw-31")
    before = broker.last_seq()
    with tls_client(server_ca, device, tmp_path) as client:
        response = client.post(broker.url + PATH, data={"role": ROLE})
    assert response.status_code == 200, response.text
    [event] = broker.audit(after=before)
    assert event.reason == "issued" and event.detail["device"]["proof"] == "mtls"
    assert event.detail["device"]["fingerprint"] == device.fingerprint


def test_mutual_tls_revoked_certificate(
    tls_broker: tuple[DeviceBroker, Path], world: DeviceWorld, tmp_path: Path
) -> None:
    broker, server_ca = tls_broker
    before, sts_before = broker.last_seq(), broker.sts_calls()
    with tls_client(server_ca, world.revoked, tmp_path) as client:
        response = client.post(broker.url + PATH, data={"role": ROLE})
    broker.refused(
        response,
        code="invalid_grant",
        reason="x509.revoked",
        before=before,
        sts_before=sts_before,
        certificate=world.revoked,
    )


def test_tls_without_a_client_certificate(tls_broker: tuple[DeviceBroker, Path], tmp_path: Path) -> None:
    broker, server_ca = tls_broker
    before, sts_before = broker.last_seq(), broker.sts_calls()
    with tls_client(server_ca, None, tmp_path) as client:
        response = client.post(broker.url + PATH, data={"role": ROLE})
    broker.refused(
        response,
        code="authentication_failed",
        reason="x509.no_client_certificate",
        status=401,
        before=before,
        sts_before=sts_before,
    )


def test_device_helper_over_mutual_tls(
    tls_broker: tuple[DeviceBroker, Path], world: DeviceWorld, tmp_path: Path
) -> None:
    broker, server_ca = tls_broker
    cert, key = world.hierarchy.device("gw-32").write(tmp_path, "gw-32")
    command = [
        sys.executable, "-c", "from broker.entry import main; main()",
        "device", "credential-process", "--cert", str(cert), "--key", str(key), "--role", ROLE,
        "--url", broker.url, "--mtls", "--ca-bundle", str(server_ca),
    ]  # fmt: skip
    env = broker_env(BROKER_CLIENT_HOME=str(tmp_path / "home"), BROKER_CLIENT_KEYRING="file")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert '"AccessKeyId"' in result.stdout and os.fspath(key) not in result.stderr
