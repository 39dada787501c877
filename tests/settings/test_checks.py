"""Checks across sections: each problem carries the YAML path of the value at fault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.settings import reference_problems
from tests.support.config_files import good, problems

OIDC = {"type": "oidc", "issuer": "https://idp.example.com", "client_id": "broker", "client_secret": "s"}


def test_plain_http_public_url_needs_insecure_cookies_outside_dev(tmp_path: Path) -> None:
    found = problems(tmp_path, good() | {"public_url": "http://broker.example.com"})
    assert found == {"public_url": "must be https:// when session.cookie_secure is true"}


def test_grant_rule_naming_unknown_store_is_refused(tmp_path: Path) -> None:
    data = good()
    data["roles"][0]["grant"] = [{"groups": ["eng"]}, {"stores": ["corp", "nowhere"]}]
    data["identity_stores"] = [OIDC | {"name": "corp"}]
    assert problems(tmp_path, data) == {"roles[0].grant[1].stores[1]": "unknown identity store 'nowhere'"}


def test_names_are_unique_and_each_duplicate_is_named(tmp_path: Path) -> None:
    data: dict[str, Any] = good() | {
        "identity_stores": [OIDC | {"name": "corp"}, OIDC | {"name": "corp", "issuer": "https://b.example.com"}],
        "oauth": {
            "workload_issuers": [
                {
                    "name": "corp",
                    "issuer": "https://broker.example.com",
                    "jwks_uri": "https://broker.example.com/jwks.json",
                    "audiences": ["broker"],
                }
            ]
        },
    }
    assert problems(tmp_path, data) == {
        "identity_stores[1].name": "'corp' is already used by identity_stores[0]",
        "oauth.workload_issuers[0].name": (
            "'corp' is also an identity store's name; names must differ from identity_stores names"
        ),
        "oauth.workload_issuers[0].issuer": "the broker's own public_url cannot be a workload issuer",
    }


def test_cross_checks_on_plain_data_skip_values_of_the_wrong_shape() -> None:
    data: dict[str, Any] = {
        "mode": "dev",
        "identity_stores": ["not a mapping", {"name": "a", "domains": "example.com"}, {"name": "b", "domains": [3]}],
        "roles": {"not": "a list"},
        "scim": {"clients": [{"store": 5}, {"store": "ghost"}]},
        "discovery": {"enabled": True},
    }
    assert reference_problems(data) == [
        ("discovery.enabled", "list domains on an identity store (or set fallback_store)"),
        ("scim.clients[1].store", "unknown identity store 'ghost'"),
    ]


def test_device_client_ca_needs_tls_at_the_broker(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    found = problems(tmp_path, good() | {"devices": {"tls_client_ca_file": str(ca)}})
    assert found == {"devices.tls_client_ca_file": "needs server.tls_cert_file and tls_key_file (TLS at the broker)"}


def test_web_identity_needs_es256(tmp_path: Path) -> None:
    data = good() | {"aws": {"mode": "web_identity"}, "oauth": {"tokens": {"algorithm": "EdDSA"}}}
    assert problems(tmp_path, data) == {
        "aws.mode": "web_identity needs oauth.tokens.algorithm ES256 (STS does not accept EdDSA)"
    }
