"""schemathesis against the broker's own OpenAPI document, on a live broker (real socket, moto, SQLite/PG).

Every documented operation gets generated (valid and invalid) inputs; no answer may be a 5xx and every JSON
answer must match the schema the document declares for it. Deterministic and bounded: ``derandomize`` and a
small ``max_examples`` (raise ``SCHEMATHESIS_MAX_EXAMPLES`` for a longer run).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from broker.app import create_app
from broker.connectors.local import hash_password
from broker.settings import load_settings
from tests.conftest import base_config
from tests.support.processes import LiveServer
from tests.support.workload_tokens import TestIssuer

MAX_EXAMPLES = int(os.environ.get("SCHEMATHESIS_MAX_EXAMPLES", "12"))


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, sts_endpoint: str) -> Iterator[LiveServer]:
    from broker.store import db as store_db

    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'broker.db'}"
    store_db.upgrade(url)
    cluster = TestIssuer("https://k8s.fuzz.test")
    config: dict[str, Any] = base_config(
        url,
        sts_endpoint,
        secret_key=secrets.token_urlsafe(40),
        # Fuzzing must reach the handlers, not the abuse limits; it reads the (opt-in) OpenAPI document.
        rate_limits={"enabled": False},
        server={"api_docs": True},
        identity_stores=[
            {
                "type": "local",
                "name": "breakglass",
                "accounts": [
                    {
                        "username": "alice",
                        "password_hash": hash_password("fuzz-password-long-enough"),
                        "totp_secret": "JBSWY3DPEHPK3PXP",
                        "groups": ["engineering"],
                    }
                ],
            }
        ],
        oauth={
            "workload_issuers": [
                {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
            ],
            "audiences": [{"audience": "https://payments.internal", "grant": [{"stores": ["k8s"]}]}],
        },
    )
    with LiveServer(create_app(load_settings(None, **config))) as server:
        yield server


def test_no_server_errors_and_schema_conformance(live: LiveServer) -> None:
    schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case: Any) -> None:
            case.call_and_validate(base_url=live.url, checks=[not_a_server_error, response_schema_conformance])

        run()
