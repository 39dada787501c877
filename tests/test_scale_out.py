"""Two ``broker serve`` processes against one PostgreSQL (and one Redis): nothing that matters is per process.

A SAML assertion, an OIDC callback (state + code) and a workload token's ``jti`` accepted by one process are
refused when replayed on the other, and a rate limit counted through Redis holds across both. (The device-code
cross-process test lives with the device flow.)
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.conftest import _reset_postgres, base_config
from tests.support.broker_process import BrokerProcess, migrate, write_config
from tests.support.oidc_flow import ACCOUNTS, provider_config, store_config
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.processes import free_port
from tests.support.saml_broker import USERS, saml_store
from tests.support.saml_idp import AC_MFA, SamlIdpServer
from tests.support.workload_tokens import TestIssuer

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPE_JWT = "urn:ietf:params:oauth:token-type:jwt"
PAYMENTS = "https://payments.internal"


@pytest.fixture(scope="module")
def cluster() -> TestIssuer:
    return TestIssuer("https://k8s.scale.test")


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, postgres_server_url: str, sts_endpoint: str, cluster: TestIssuer
) -> Iterator[tuple[BrokerProcess, BrokerProcess, str, SamlIdpServer]]:
    _reset_postgres(postgres_server_url)
    # One public URL (the load balancer's); each process has its own port behind it.
    port_a, port_b = free_port(), free_port()
    public = f"http://127.0.0.1:{port_a}"
    idp = SamlIdpServer(f"{public}/saml/corp/metadata", f"{public}/saml/corp/acs", USERS)
    idp.start()
    with OidcProvider() as op:
        op.start(provider_config(public, "oidc"))
        config: dict[str, Any] = base_config(
            postgres_server_url,
            sts_endpoint,
            public_url=public,
            secret_key=secrets.token_urlsafe(40),
            log_json=True,
            identity_stores=[saml_store(idp), store_config("oidc", op.issuer)],
            rate_limits={"storage_url": "redis://127.0.0.1:6379", "limits": {"token.ip": "12/hour"}},
            oauth={
                "workload_issuers": [
                    {
                        "name": "k8s",
                        "issuer": cluster.issuer,
                        "jwks": cluster.jwks(),
                        "audiences": ["broker"],
                        "single_use_jti": True,
                    }
                ],
                "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
            },
        )
        path = write_config(tmp_path_factory.mktemp("scale") / "broker.yaml", config)
        migrate(path)
        with BrokerProcess(path, port=port_a) as a, BrokerProcess(path, port=port_b) as b:
            assert a.pid != b.pid
            yield a, b, postgres_server_url, idp
    idp.stop()


def audit(db_url: str) -> list[AuditEvent]:
    database = Database(db_url)
    try:
        with database.transaction() as s:
            return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all())
    finally:
        database.dispose()


def issuances(db_url: str) -> int:
    database = Database(db_url)
    try:
        with database.transaction() as s:
            return len(s.scalars(select(Issuance)).all())
    finally:
        database.dispose()


def test_saml_assertion_replayed_on_the_other_process(pair: Any) -> None:
    a, b, db_url, idp = pair
    with httpx.Client(timeout=30, headers={"Accept": "text/html"}) as browser:
        started = browser.get(f"{a.url}/saml/corp/login")
        assert started.status_code == 303
        saml_request = parse_qs(urlsplit(started.headers["location"]).query)["SAMLRequest"][0]
        request = idp.idp.parse_authn_request_full(saml_request, None)
        binding = browser.cookies.get("broker_saml")
        xml = idp.idp.make_response(
            name_id="alice@corp.example",
            attributes=USERS["alice"].get("attributes"),
            authn_context_class_ref=AC_MFA,
            in_response_to=request.request_id,
        )
        form = {"SAMLResponse": base64.b64encode(xml.encode()).decode()}
        first = browser.post(f"{a.url}/saml/corp/acs", data=form)
        assert first.status_code == 303, first.text
        before = len(audit(db_url))
        # The same response, same browser binding, delivered to the other replica.
        browser.cookies.set("broker_saml", binding or "", path="/saml/")
        again = browser.post(f"{b.url}/saml/corp/acs", data=form)
    assert again.status_code in {400, 401}
    assert "broker_session" not in again.headers.get("set-cookie", "")
    (event,) = audit(db_url)[before:]
    assert event.outcome == "denied", event.reason
    assert "replay" in event.reason or "unknown" in event.reason, event.reason


def test_oidc_callback_replayed_on_the_other_process(pair: Any) -> None:
    a, b, db_url, _ = pair
    with httpx.Client(timeout=30) as browser:
        start = browser.get(f"{a.url}/login/oidc")
        assert start.status_code == 303
        callback = login_over_http(browser, start.headers["location"], "alice", ACCOUNTS["alice"]["password"])
        location = callback.headers["location"]
        assert browser.get(location).status_code == 303  # process A completes the sign-in
        before = len(audit(db_url))
        replay = browser.get(location.replace(a.url, b.url))
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    (event,) = audit(db_url)[before:]
    assert (event.outcome, event.reason) == ("denied", "oidc.state_unknown")


def test_workload_jti_replayed_on_the_other_process(pair: Any, cluster: TestIssuer) -> None:
    a, b, db_url, _ = pair
    token = cluster.token(audience="broker")
    data = {"grant_type": GRANT, "subject_token": token, "subject_token_type": TOKEN_TYPE_JWT, "audience": PAYMENTS}
    first = httpx.post(f"{a.url}/oauth2/token", data=data, timeout=30)
    assert first.status_code == 200, first.text
    before = len(audit(db_url))
    again = httpx.post(f"{b.url}/oauth2/token", data=data, timeout=30)
    assert again.status_code == 400 and "access_token" not in again.json()
    (event,) = audit(db_url)[before:]
    assert (event.outcome, event.reason) == ("denied", "jti_replay")


def test_rate_limit_is_shared_through_redis(pair: Any) -> None:
    a, b, db_url, _ = pair
    form = {"grant_type": "client_credentials"}
    # token.ip is 12/hour for the whole deployment; earlier tests in this module used a few.
    statuses = [httpx.post(f"{(a, b)[i % 2].url}/oauth2/token", data=form, timeout=30).status_code for i in range(14)]
    assert 429 in statuses
    first_refusal = statuses.index(429)
    assert first_refusal <= 12 and set(statuses[first_refusal:]) == {429}
    # Both replicas refuse now: the counter is shared, not per process.
    assert httpx.post(f"{a.url}/oauth2/token", data=form, timeout=30).status_code == 429
    assert httpx.post(f"{b.url}/oauth2/token", data=form, timeout=30).status_code == 429
    assert [e.reason for e in audit(db_url) if e.event == "ratelimit"] == ["rate_limited.token.ip"]


def test_signing_keys_are_shared(pair: Any) -> None:
    a, b, _, _ = pair
    jwks_a = httpx.get(f"{a.url}/jwks.json", timeout=30).json()
    jwks_b = httpx.get(f"{b.url}/jwks.json", timeout=30).json()
    assert jwks_a == jwks_b and jwks_a["keys"]
