"""The ``type: x509`` connector and its CRL cache, on their own: mapping rules, limits, revocation lists.

CRLs are served by a real HTTP server on loopback; the certificates are a real hierarchy.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.connectors.x509 import X509Connector, certificate_fields, parse_chain
from broker.errors import BrokerError, ConfigError
from broker.http import HttpClient
from broker.settings import X509StoreConfig, load_settings
from tests.conftest import SECRET
from tests.support.certificates import Hierarchy, make_crl, now
from tests.support.loopback import LoopbackServer


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy()


@pytest.fixture
def crl_server() -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient() as client:
        yield client


def store(hierarchy: Hierarchy, folder: Path, **overrides: Any) -> X509StoreConfig:
    anchors, intermediates = hierarchy.write(folder)
    data: dict[str, Any] = {
        "type": "x509",
        "name": "edge",
        "trust_anchors": [anchors],
        "intermediates": [intermediates],
        "rules": [
            {"match": {"san.dns": "*.ci.edge.corp.example"}, "subject": "{san.dns}", "groups": ["ci"]},
            {
                "match": {"san.uri": "spiffe://corp.example/edge/*"},
                "subject": "{san.uri}",
                "username": "edge-{subject.CN}",
                "attributes": {"device_id": "{subject.CN}"},
            },
        ],
        **overrides,
    }
    return X509StoreConfig(**data)


def reason(action: Any) -> str:
    with pytest.raises(BrokerError) as caught:
        action()
    return caught.value.reason


def test_first_matching_rule_gives_the_identity(hierarchy: Hierarchy, tmp_path: Path, http: HttpClient) -> None:
    connector = X509Connector(store(hierarchy, tmp_path), http=http)
    device = hierarchy.device("gw-9", dns=["gw-9.edge.corp.example", "gw-9.ci.edge.corp.example"])
    identity = connector.verify([device.certificate], now()).identity
    # The multi-valued SAN matched on its second value, and renders the value that matched.
    assert identity.subject == "gw-9.ci.edge.corp.example" and identity.groups == {"ci"}
    spiffe = connector.verify([hierarchy.device("gw-10").certificate], now()).identity
    assert (spiffe.subject, spiffe.username, spiffe.store) == ("spiffe://corp.example/edge/gw-10", "edge-gw-10", "edge")
    assert spiffe.attributes["device_id"] == "gw-10"
    assert spiffe.attributes["x509.issuer"] == "CN=Corp Edge Issuing CA,O=Corp"


def test_certificate_fields(hierarchy: Hierarchy) -> None:
    device = hierarchy.device("gw-11")
    fields = certificate_fields(device.certificate)
    assert fields["subject.CN"] == ("gw-11",) and fields["issuer.CN"] == ("Corp Edge Issuing CA",)
    assert fields["serial"] == (device.serial_hex,) and fields["fingerprint"] == (device.fingerprint,)
    assert fields["san.uri"] == ("spiffe://corp.example/edge/gw-11",)


def test_presented_intermediates_can_be_turned_off(hierarchy: Hierarchy, tmp_path: Path, http: HttpClient) -> None:
    connector = X509Connector(store(hierarchy, tmp_path, intermediates=[], client_intermediates=False), http=http)
    chain = [hierarchy.device().certificate, hierarchy.intermediate.certificate]
    assert reason(lambda: connector.verify(chain, now())) == "x509.untrusted_chain"


def test_chain_limits_before_parsing(hierarchy: Hierarchy) -> None:
    assert reason(lambda: parse_chain([b"x"] * 5, max_certificates=4)) == "x509.chain_too_large"
    assert reason(lambda: parse_chain([b"x" * 9000], max_certificates=4)) == "x509.chain_too_large"
    assert reason(lambda: parse_chain([b"not der"], max_certificates=4)) == "x509.malformed"
    assert reason(lambda: parse_chain([], max_certificates=4)) == "x509.no_certificate"


def test_crl_is_cached_and_refetched_after_max_age(
    hierarchy: Hierarchy, tmp_path: Path, http: HttpClient, crl_server: LoopbackServer
) -> None:
    crl_server.routes["/edge.crl"] = (200, make_crl(hierarchy.intermediate))
    config = store(hierarchy, tmp_path, crl_urls=[crl_server.url + "/edge.crl"], crl_max_age_seconds=10)
    connector = X509Connector(config, http=http)
    clock = [1000.0]
    connector.crls._monotonic = lambda: clock[0]
    device = hierarchy.device("gw-12")
    assert connector.verify([device.certificate], now()).revocation == "good"
    assert connector.verify([device.certificate], now()).revocation == "good"
    assert crl_server.hit_count("/edge.crl") == 1
    # The CA revokes the device; the broker notices once the cached copy is older than crl_max_age_seconds.
    crl_server.routes["/edge.crl"] = (200, make_crl(hierarchy.intermediate, [device]))
    clock[0] += 11
    assert reason(lambda: connector.verify([device.certificate], now())) == "x509.revoked"
    assert crl_server.hit_count("/edge.crl") == 2


def test_crl_signed_by_another_ca_is_not_trusted(
    hierarchy: Hierarchy, tmp_path: Path, http: HttpClient, crl_server: LoopbackServer
) -> None:
    # A CRL naming the right issuer but signed by someone else's key: ignored, so revocation is unknown.
    impostor = Hierarchy()
    impostor.intermediate.certificate = hierarchy.intermediate.certificate
    crl_server.routes["/edge.crl"] = (200, make_crl(impostor.intermediate))
    connector = X509Connector(store(hierarchy, tmp_path, crl_urls=[crl_server.url + "/edge.crl"]), http=http)
    assert reason(lambda: connector.verify([hierarchy.device().certificate], now())) == "x509.crl_unavailable"


def test_oversized_crl_fails_closed(
    hierarchy: Hierarchy, tmp_path: Path, http: HttpClient, crl_server: LoopbackServer
) -> None:
    crl_server.routes["/edge.crl"] = (200, make_crl(hierarchy.intermediate) + b"\0" * 4096)
    config = store(hierarchy, tmp_path, crl_urls=[crl_server.url + "/edge.crl"], crl_max_bytes=1024)
    connector = X509Connector(config, http=http)
    assert reason(lambda: connector.verify([hierarchy.device().certificate], now())) == "x509.crl_unavailable"


def test_stale_crl(hierarchy: Hierarchy, tmp_path: Path, http: HttpClient, crl_server: LoopbackServer) -> None:
    stale = make_crl(
        hierarchy.intermediate, last_update=now() - dt.timedelta(days=2), next_update=now() - dt.timedelta(minutes=1)
    )
    crl_server.routes["/edge.crl"] = (200, stale)
    connector = X509Connector(store(hierarchy, tmp_path, crl_urls=[crl_server.url + "/edge.crl"]), http=http)
    assert reason(lambda: connector.verify([hierarchy.device().certificate], now())) == "x509.crl_stale"


def test_config_problems_are_reported_with_their_path(hierarchy: Hierarchy, tmp_path: Path) -> None:
    anchors, _ = hierarchy.write(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigError) as caught:
        load_settings(
            None,
            secret_key=SECRET,
            identity_stores=[
                {
                    "type": "x509",
                    "name": "edge",
                    "trust_anchors": [str(anchors), str(bad)],
                    "rules": [{"match": {"subject.CN": "*"}, "subject": "{subject.nickname}", "username": "{tpm}"}],
                }
            ],
        )
    problems = dict(caught.value.problems)
    joined = " ".join(problems.values())
    assert "bad.pem is not a PEM certificate file" in joined
    assert "{tpm} is not a certificate field" in joined
