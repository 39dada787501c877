"""Devices sign in with an RFC 7523 assertion carrying their certificate chain, on SQLite and PostgreSQL.

The broker runs on a real socket; the CA hierarchy is real (``tests/support/certificates.py``), its CRLs are
served over HTTP on loopback, and STS is moto's server behind a proxy that counts calls. Every hostile case
checks the error code, that STS was never called, that no credentials were recorded, and that exactly one
audit event names the failed check with the certificate's fingerprint, issuer and serial.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from broker.app import create_app
from broker.settings import load_settings
from tests.support.certificates import Hierarchy, make_ca, make_leaf, now
from tests.support.devices import ROLE_ARN, DeviceBroker, DeviceWorld, assertion, device_world, x5c
from tests.support.processes import LiveServer


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, sts_endpoint: str) -> Iterator[DeviceWorld]:
    with device_world(tmp_path_factory.mktemp("pki"), sts_endpoint) as world:
        yield world


@pytest.fixture
def start(
    make_config: Callable[..., dict[str, Any]], db_url: str, world: DeviceWorld
) -> Iterator[Callable[..., DeviceBroker]]:
    servers: list[LiveServer] = []

    def run(**store_overrides: Any) -> DeviceBroker:
        config = world.config(make_config(), **store_overrides)
        server = LiveServer(create_app(load_settings(None, **config)))
        servers.append(server)
        server.__enter__()
        return DeviceBroker(server.url, db_url, world)

    try:
        yield run
    finally:
        for server in servers:
            server.__exit__(None, None, None)
        world.serve_crls()


@pytest.fixture
def broker(start: Callable[..., DeviceBroker]) -> DeviceBroker:
    return start()


def baseline(broker: DeviceBroker) -> dict[str, int]:
    return {"before": broker.last_seq(), "sts_before": broker.sts_calls()}


# ---------------------------------------------------------------- what works


def test_device_gets_credentials_with_tags_and_source_identity(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["role_arn"] == ROLE_ARN and body["token_type"] == "N_A"
    creds = body["aws_credentials"]
    assert creds["Version"] == 1 and creds["AccessKeyId"]
    assert broker.sts_calls() == start["sts_before"] + 1
    [issuance] = broker.issuances()
    assert issuance.source_identity == "gw-17"
    assert issuance.session_tags == {"DeviceId": "gw-17"}
    [event] = broker.audit(after=start["before"])
    assert (event.event, event.outcome, event.reason, event.store) == ("credentials", "ok", "issued", "edge")
    assert event.principal == "gw-17"
    device_detail = event.detail["device"]
    assert device_detail["fingerprint"] == device.fingerprint
    assert device_detail["serial"] == device.serial_hex
    assert device_detail["issuer"] == "CN=Corp Edge Issuing CA,O=Corp"
    assert device_detail["revocation"] == "good" and device_detail["proof"] == "jwt"
    # The credentials are real (moto's STS) and carry the device as the assumed-role session.
    sts = boto3.client(
        "sts",
        endpoint_url=world.sts_proxy.url,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    assert sts.get_caller_identity()["Arn"].startswith("arn:aws:sts::123456789012:assumed-role/EdgeTelemetry/")


def test_presented_intermediate_and_role_by_arn(start: Callable[..., DeviceBroker], world: DeviceWorld) -> None:
    broker = start(intermediates=[])  # the intermediate comes only from x5c
    device = world.hierarchy.device("gw-18")
    response = broker.token(assertion(device, chain=[world.hierarchy.intermediate]), role="", resource=ROLE_ARN)
    assert response.status_code == 200, response.text


def test_discovery_lists_the_grant(broker: DeviceBroker) -> None:
    metadata = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server").json()
    assert "urn:ietf:params:oauth:grant-type:jwt-bearer" in metadata["grant_types_supported"]


# ---------------------------------------------------------------- hostile certificates


def test_certificate_from_another_ca(broker: DeviceBroker) -> None:
    other = Hierarchy()
    device = other.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, chain=[other.intermediate]))
    broker.refused(response, code="invalid_grant", reason="x509.untrusted_chain", certificate=device, **start)


def test_untrusted_intermediate_in_x5c(broker: DeviceBroker, world: DeviceWorld) -> None:
    # An intermediate with the real one's name, issued by the attacker's root: never a path to the anchor.
    fake = make_ca("Corp Edge Issuing CA", issuer=Hierarchy().root, path_length=0)
    device = make_leaf(fake, "gw-17", uri="spiffe://corp.example/edge/gw-17", dns=["gw-17.edge.corp.example"])
    start = baseline(broker)
    response = broker.token(assertion(device, chain=[fake]))
    broker.refused(response, code="invalid_grant", reason="x509.untrusted_chain", certificate=device, **start)


def test_ca_certificate_used_as_leaf(broker: DeviceBroker, world: DeviceWorld) -> None:
    intermediate = world.hierarchy.intermediate
    start = baseline(broker)
    response = broker.token(assertion(intermediate))
    broker.refused(response, code="invalid_grant", reason="x509.ca_as_leaf", certificate=intermediate, **start)


@pytest.mark.parametrize(
    ("window", "reason"),
    [
        ((-10, -1), "x509.expired"),
        ((1, 10), "x509.not_yet_valid"),
    ],
)
def test_expired_or_not_yet_valid(
    broker: DeviceBroker, world: DeviceWorld, window: tuple[int, int], reason: str
) -> None:
    device = world.hierarchy.device(
        "gw-17", not_before=now() + dt.timedelta(days=window[0]), not_after=now() + dt.timedelta(days=window[1])
    )
    start = baseline(broker)
    broker.refused(broker.token(assertion(device)), code="invalid_grant", reason=reason, certificate=device, **start)


def test_revoked_serial_on_the_crl(broker: DeviceBroker, world: DeviceWorld) -> None:
    start = baseline(broker)
    response = broker.token(assertion(world.revoked))
    broker.refused(response, code="invalid_grant", reason="x509.revoked", certificate=world.revoked, **start)
    assert world.crl_server.hit_count("/edge.crl") >= 1


def test_missing_client_auth_eku(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17", no_eku=True)
    start = baseline(broker)
    broker.refused(
        broker.token(assertion(device)), code="invalid_grant", reason="x509.eku", certificate=device, **start
    )


def test_server_auth_only_eku(broker: DeviceBroker, world: DeviceWorld) -> None:
    from cryptography.x509.oid import ExtendedKeyUsageOID

    device = world.hierarchy.device("gw-17", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    start = baseline(broker)
    broker.refused(
        broker.token(assertion(device)), code="invalid_grant", reason="x509.eku", certificate=device, **start
    )


def test_name_constraint_violation(broker: DeviceBroker, world: DeviceWorld) -> None:
    # The intermediate may only issue names under edge.corp.example.
    device = world.hierarchy.device("gw-17", dns=["gw-17.payments.corp.example"])
    start = baseline(broker)
    response = broker.token(assertion(device))
    broker.refused(response, code="invalid_grant", reason="x509.name_constraints", certificate=device, **start)


def test_path_length_violation(broker: DeviceBroker, world: DeviceWorld) -> None:
    # The intermediate has pathLenConstraint 0: a CA below it cannot issue devices.
    sub = make_ca("Rogue Sub CA", issuer=world.hierarchy.intermediate)
    device = make_leaf(sub, "gw-17", uri="spiffe://corp.example/edge/gw-17", dns=["gw-17.edge.corp.example"])
    start = baseline(broker)
    response = broker.token(assertion(device, chain=[sub]))
    broker.refused(response, code="invalid_grant", reason="x509.path_length", certificate=device, **start)


def test_no_mapping_rule_matches(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17", uri="spiffe://corp.example/payments/api")
    start = baseline(broker)
    response = broker.token(assertion(device))
    broker.refused(response, code="invalid_grant", reason="x509.no_mapping", certificate=device, **start)


def test_oversized_chain(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    padding = [world.hierarchy.intermediate] * 5
    start = baseline(broker)
    response = broker.token(assertion(device, chain=padding))
    broker.refused(response, code="invalid_grant", reason="x509.chain_too_large", certificate=device, **start)


def test_oversized_certificate(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    huge = [*x5c(device), "A" * 12000]
    start = baseline(broker)
    response = broker.token(assertion(device, x5c_values=huge))
    broker.refused(response, code="invalid_grant", reason="x509.chain_too_large", certificate=device, **start)


# ---------------------------------------------------------------- hostile assertions


def test_assertion_signed_by_another_key(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, signer=ec.generate_private_key(ec.SECP256R1())))
    broker.refused(response, code="invalid_grant", reason="x509.assertion_signature", certificate=device, **start)


def test_replayed_assertion(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    signed = assertion(device)
    assert broker.token(signed).status_code == 200
    start = baseline(broker)
    broker.refused(
        broker.token(signed),
        code="invalid_grant",
        reason="x509.assertion_replay",
        certificate=device,
        issued=1,
        **start,
    )


def test_long_lived_assertion(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, lifetime=3600))
    broker.refused(response, code="invalid_grant", reason="x509.assertion_lifetime", certificate=device, **start)


def test_expired_assertion(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, iat=int(time.time()) - 600))
    broker.refused(response, code="invalid_grant", reason="x509.assertion_expired", certificate=device, **start)


def test_assertion_for_another_audience(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, audience="https://other-broker.example/oauth2/token"))
    broker.refused(response, code="invalid_grant", reason="x509.assertion_audience", certificate=device, **start)


def test_assertion_naming_a_key_url(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device, header={"jku": broker.world.crl_server.url + "/keys"}))
    broker.refused(response, code="invalid_grant", reason="x509.assertion_header", certificate=device, **start)
    assert broker.world.crl_server.hit_count("/keys") == 0


@pytest.mark.parametrize("alg", ["none", "HS256"])
def test_unsigned_or_symmetric_assertion(broker: DeviceBroker, world: DeviceWorld, alg: str) -> None:
    device = world.hierarchy.device("gw-17")
    header = {"alg": alg, "typ": "JWT", "x5c": x5c(device)}
    encoded = base64.urlsafe_b64encode(json.dumps(header).encode()).rstrip(b"=").decode()
    forged = encoded + "." + assertion(device).split(".")[1] + "."
    start = baseline(broker)
    broker.refused(broker.token(forged), code="invalid_grant", reason="x509.assertion_alg", certificate=device, **start)


def test_role_the_device_is_not_granted(broker: DeviceBroker, world: DeviceWorld) -> None:
    device = world.hierarchy.device("gw-17")
    start = baseline(broker)
    response = broker.token(assertion(device), role="admin")
    broker.refused(response, code="invalid_target", reason="role_not_granted", certificate=device, **start)


# ---------------------------------------------------------------- revocation lists that fail


def test_unfetchable_crl_fails_closed(start: Callable[..., DeviceBroker], world: DeviceWorld) -> None:
    broker = start(crl_urls=[world.crl_server.url + "/missing.crl"])
    device = world.hierarchy.device("gw-17")
    begin = baseline(broker)
    response = broker.token(assertion(device))
    broker.refused(
        response,
        code="temporarily_unavailable",
        reason="x509.crl_unavailable",
        status=503,
        certificate=device,
        **begin,
    )


def test_stale_crl_fails_closed(start: Callable[..., DeviceBroker], world: DeviceWorld) -> None:
    world.serve_crls(last_update=now() - dt.timedelta(days=2), next_update=now() - dt.timedelta(hours=1))
    broker = start()
    device = world.hierarchy.device("gw-17")
    begin = baseline(broker)
    response = broker.token(assertion(device))
    broker.refused(
        response, code="temporarily_unavailable", reason="x509.crl_stale", status=503, certificate=device, **begin
    )


def test_unfetchable_crl_allowed_by_store_policy_is_audited(
    start: Callable[..., DeviceBroker], world: DeviceWorld
) -> None:
    broker = start(crl_urls=[world.crl_server.url + "/missing.crl"], crl_failure="allow")
    begin = baseline(broker)
    response = broker.token(assertion(world.hierarchy.device("gw-17")))
    assert response.status_code == 200, response.text
    [event] = broker.audit(after=begin["before"])
    assert event.detail["device"]["revocation"].startswith("unknown (crl_failure: allow)")


def test_unique_jti_per_device_is_not_shared(broker: DeviceBroker, world: DeviceWorld) -> None:
    # Two devices may pick the same jti: the replay key is per certificate.
    jti = secrets.token_urlsafe(8)
    first = broker.token(assertion(world.hierarchy.device("gw-1"), jti=jti))
    second = broker.token(assertion(world.hierarchy.device("gw-2"), jti=jti))
    assert (first.status_code, second.status_code) == (200, 200)
