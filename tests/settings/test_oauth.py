"""The token endpoint's settings: public keys only, one entry per issuer and client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.config_files import good, problems

ISSUER = {"name": "k8s", "issuer": "https://k8s.example.com", "audiences": ["broker"]}


def test_an_inline_jwks_holds_public_keys_only(tmp_path: Path) -> None:
    private = {"keys": [{"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "private"}]}
    data: dict[str, Any] = good() | {"oauth": {"workload_issuers": [ISSUER | {"jwks": private}]}}
    assert problems(tmp_path, data) == {
        "oauth.workload_issuers[0].jwks": "keys must be public: remove the private part (d)"
    }


def test_issuers_and_clients_are_configured_once(tmp_path: Path) -> None:
    issuer = ISSUER | {"jwks_uri": "https://k8s.example.com/jwks"}
    data: dict[str, Any] = good() | {"oauth": {"workload_issuers": [issuer, issuer | {"name": "other"}]}}
    assert problems(tmp_path, data) == {"oauth": "workload_issuers: each issuer may be configured once"}
