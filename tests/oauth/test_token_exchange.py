"""RFC 8693 token exchange end to end: the broker on a real socket, real workload issuers, moto's STS.

Workload issuers: the ``oidc-provider`` peer (client-credentials grant, RFC 9068 JWT access tokens) and a
Kubernetes-shaped service-account issuer whose JWKS is served over loopback. Every hostile case checks the
RFC error code, that no credentials left (no issuance row), and exactly one audit event with its reason.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import boto3
import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet
from sqlalchemy import func, select

from broker.app import create_app
from broker.oauth.token_exchange import TOKEN_TYPE_AWS_CREDENTIALS
from broker.oauth.workload import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT
from broker.settings import load_settings
from broker.store import queries
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance
from tests.support.loopback import LoopbackServer
from tests.support.oidc_provider import OidcProvider, login_over_http
from tests.support.processes import LiveServer
from tests.support.workload_tokens import K8S_ISSUER, TestIssuer, hs256_with_public_key, sign_raw, unsigned

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
BROKER_AUDIENCE = "broker"  # the audience a pod's projected token is requested for
EXCHANGE_RESOURCE = "urn:broker:exchange"  # the resource indicator services ask the IdP for
SVC_SECRET = "svc-secret-0123456789-0123456789-0123456789"
RP_SECRET = "rp-secret-0123456789-0123456789-0123456789"
GATEWAY_SECRET = "gateway-secret-0123456789-0123456789-01234"
RP_REDIRECT = "http://127.0.0.1:9/callback"
PAYMENTS = "https://payments.internal"
REPORTS = "https://reports.internal"
DEPLOYER_ARN = "arn:aws:iam::123456789012:role/ShopDeployer"


# ---------------------------------------------------------------- peers


@pytest.fixture(scope="module")
def idp() -> Iterator[OidcProvider]:
    with OidcProvider() as provider:
        provider.start(
            {
                "clients": [
                    {
                        "client_id": "svc",
                        "client_secret": SVC_SECRET,
                        "redirect_uris": [],
                        "grant_types": ["client_credentials"],
                        "response_types": [],
                        "token_endpoint_auth_method": "client_secret_basic",
                    },
                    {
                        "client_id": "rp",
                        "client_secret": RP_SECRET,
                        "redirect_uris": [RP_REDIRECT],
                        "grant_types": ["authorization_code"],
                        "response_types": ["code"],
                        "token_endpoint_auth_method": "client_secret_basic",
                    },
                ],
                "accounts": {"alice": {"password": "alice-pw", "claims": {"sub": "u-alice"}}},
                "resource_servers": {EXCHANGE_RESOURCE: {"scope": "exchange"}},
            }
        )
        yield provider


def idp_access_token(idp: OidcProvider) -> str:
    """A service's access token from the company IdP's client-credentials grant (RFC 9068 JWT)."""
    response = httpx.post(
        f"{idp.issuer}/token",
        data={"grant_type": "client_credentials", "resource": EXCHANGE_RESOURCE, "scope": "exchange"},
        auth=("svc", SVC_SECRET),
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@pytest.fixture(scope="module")
def id_token(idp: OidcProvider) -> str:
    """A real ID token from the same IdP (authorization code flow with PKCE), for token-type confusion."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": "rp",
        "redirect_uri": RP_REDIRECT,
        "scope": "openid",
        "state": "s",
        "nonce": "n",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    with httpx.Client(timeout=10) as browser:
        response = login_over_http(browser, f"{idp.issuer}/auth?{urlencode(params)}", "alice", "alice-pw")
    code = parse_qs(urlsplit(response.headers["location"]).query)["code"][0]
    tokens = httpx.post(
        f"{idp.issuer}/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": RP_REDIRECT, "code_verifier": verifier},
        auth=("rp", RP_SECRET),
    ).json()
    token: str = tokens["id_token"]
    return token


@pytest.fixture(scope="module")
def cluster() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def attacker() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def client_key() -> ECKey:
    return ECKey.generate_key("P-256", auto_kid=True)


@pytest.fixture(scope="module")
def jwks_host(cluster: TestIssuer) -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        server.serve_json("/openid/v1/jwks", cluster.jwks())
        yield server


def sa_token(cluster: TestIssuer, **kwargs: Any) -> str:
    kwargs.setdefault("audience", BROKER_AUDIENCE)
    return cluster.token(**kwargs)


# ---------------------------------------------------------------- the broker


@pytest.fixture
def config(
    make_config: Callable[..., dict[str, Any]],
    idp: OidcProvider,
    jwks_host: LoopbackServer,
    client_key: ECKey,
) -> dict[str, Any]:
    base = make_config()
    base["roles"].append(
        {
            "name": "shop-deployer",
            "role_arn": DEPLOYER_ARN,
            "mfa": "none",
            "max_duration_seconds": 3600,
            "grant": [{"stores": ["k8s-prod"], "subjects": ["system:serviceaccount:shop:api"]}],
            "session_tags": {"Workload": "{subject}"},
        }
    )
    base["oauth"] = {
        "workload_issuers": [
            {
                "name": "k8s-prod",
                "issuer": K8S_ISSUER,
                "jwks_uri": jwks_host.url + "/openid/v1/jwks",
                "audiences": [BROKER_AUDIENCE],
                "required_claims": ["kubernetes.io"],
                "single_use_jti": True,
            },
            {
                "name": "corp-idp",
                "issuer": idp.issuer,
                "jwks_uri": idp.issuer + "/jwks",
                "audiences": [EXCHANGE_RESOURCE],
                "token_types": ["access_token"],
                "single_use_jti": True,
            },
        ],
        "audiences": [
            {
                "audience": PAYMENTS,
                "scopes": ["payments:read", "payments:write"],
                "grant": [{"stores": ["k8s-prod"], "claims": {"kubernetes.io.namespace": ["shop"]}}],
            },
            {"audience": REPORTS, "scopes": ["reports:read"], "grant": [{"stores": ["corp-idp"], "subjects": ["svc"]}]},
        ],
        "clients": [
            {"client_id": "gateway", "auth_method": "client_secret_basic", "client_secret": GATEWAY_SECRET},
            {
                "client_id": "ci-runner",
                "auth_method": "private_key_jwt",
                "jwks": {"keys": [client_key.as_dict(private=False)]},
            },
            {
                "client_id": "reader",
                "auth_method": "client_secret_basic",
                "client_secret": GATEWAY_SECRET,
                "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"],
            },
        ],
    }
    return base


class Running:
    def __init__(self, url: str, database: Database) -> None:
        self.url = url
        self.database = database

    def exchange(
        self,
        subject_token: str,
        subject_token_type: str = TOKEN_TYPE_JWT,
        *,
        auth: tuple[str, str] | None = None,
        **params: str,
    ) -> httpx.Response:
        data = {
            "grant_type": GRANT,
            "subject_token": subject_token,
            "subject_token_type": subject_token_type,
            **params,
        }
        return httpx.post(f"{self.url}/oauth2/token", data=data, auth=auth, timeout=20)

    def events(self) -> list[AuditEvent]:
        with self.database.transaction() as s:
            return list(queries.iter_audit_events(s))

    def issuances(self) -> int:
        with self.database.transaction() as s:
            return int(s.scalar(select(func.count()).select_from(Issuance)) or 0)

    def refused(
        self, response: httpx.Response, code: str, reason: str, before: int, status: int = 400, issued: int = 0
    ) -> None:
        """The refusal contract: RFC code, no credentials, exactly one audit event naming the check."""
        assert response.status_code == status, response.text
        body = response.json()
        assert body["error"] == code, body
        assert "access_token" not in body and "aws_credentials" not in body
        assert self.issuances() == issued
        new = self.events()[before:]
        assert len(new) == 1, [(e.event, e.reason) for e in new]
        assert new[0].outcome == "denied"
        assert new[0].reason == reason


@pytest.fixture
def broker(config: dict[str, Any], db_url: str) -> Iterator[Running]:
    app = create_app(load_settings(None, **config))
    database = Database(db_url)
    with LiveServer(app) as server:
        yield Running(server.url, database)
    database.dispose()


def verify_with_published_jwks(broker: Running, token: str, audience: str) -> jwt.Token:
    metadata = httpx.get(f"{broker.url}/.well-known/oauth-authorization-server").json()
    jwks = httpx.get(metadata["jwks_uri"].replace("http://127.0.0.1:8000", broker.url)).json()
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    jwt.JWTClaimsRegistry(
        iss={"essential": True, "value": metadata["issuer"]},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded


# ---------------------------------------------------------------- what works


def test_discovery_documents(broker: Running) -> None:
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        metadata = httpx.get(broker.url + path).json()
        assert metadata["issuer"] == "http://127.0.0.1:8000"
        assert metadata["jwks_uri"] == "http://127.0.0.1:8000/jwks.json"
        assert metadata["token_endpoint"] == "http://127.0.0.1:8000/oauth2/token"
        # Token exchange, plus the credential helper's grants (docs/cli.md).
        assert metadata["grant_types_supported"] == sorted(
            [GRANT, "authorization_code", "refresh_token", "urn:ietf:params:oauth:grant-type:device_code"]
        )
        assert TOKEN_TYPE_AWS_CREDENTIALS in metadata["requested_token_types_supported"]
    keys = httpx.get(broker.url + "/jwks.json").json()["keys"]
    assert len(keys) == 1 and keys[0]["alg"] == "ES256" and "d" not in keys[0]


def test_service_account_token_for_a_broker_token(broker: Running, cluster: TestIssuer) -> None:
    before = len(broker.events())
    response = broker.exchange(sa_token(cluster), audience=PAYMENTS, scope="payments:read")
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["issued_token_type"] == TOKEN_TYPE_ACCESS_TOKEN
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "payments:read"
    assert 0 < body["expires_in"] <= 300
    decoded = verify_with_published_jwks(broker, body["access_token"], PAYMENTS)
    assert decoded.header["typ"] == "at+jwt"
    assert decoded.claims["sub"] == "k8s-prod:system:serviceaccount:shop:api"
    assert decoded.claims["scope"] == "payments:read"
    assert "act" not in decoded.claims
    [event] = broker.events()[before:]
    assert (event.event, event.outcome, event.reason, event.channel) == ("token_exchange", "ok", "issued", "service")
    assert event.principal == "system:serviceaccount:shop:api" and event.store == "k8s-prod"
    assert event.detail["jti"] == decoded.claims["jti"]
    assert broker.issuances() == 0  # a broker token is not AWS credentials


def test_idp_client_credentials_token_for_a_broker_token(broker: Running, idp: OidcProvider) -> None:
    response = broker.exchange(idp_access_token(idp), TOKEN_TYPE_ACCESS_TOKEN, resource=REPORTS)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["scope"] == "reports:read"  # no scope asked: what the binding grants
    decoded = verify_with_published_jwks(broker, body["access_token"], REPORTS)
    assert decoded.claims["sub"] == "corp-idp:svc"


def test_service_account_token_for_aws_credentials(broker: Running, cluster: TestIssuer, sts_endpoint: str) -> None:
    before = len(broker.events())
    response = broker.exchange(
        sa_token(cluster), requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS, audience="shop-deployer"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["issued_token_type"] == TOKEN_TYPE_AWS_CREDENTIALS
    assert body["token_type"] == "N_A"
    creds = body["aws_credentials"]
    assert body["access_token"] == creds["SessionToken"]
    assert body["role_arn"] == DEPLOYER_ARN
    assert 0 < body["expires_in"] <= 3600
    caller = boto3.client(
        "sts",
        endpoint_url=sts_endpoint,
        region_name="us-east-1",
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    ).get_caller_identity()
    session_name = "system-serviceaccount-shop-api"
    assert caller["Arn"].startswith(f"arn:aws:sts::123456789012:assumed-role/ShopDeployer/{session_name}")
    assert broker.issuances() == 1
    with broker.database.transaction() as s:
        issuance = s.scalars(select(Issuance)).one()
        assert (issuance.channel, issuance.role_name) == ("service", "shop-deployer")
        assert issuance.source_identity.startswith(session_name)
        assert issuance.access_key_id == creds["AccessKeyId"]
    [event] = broker.events()[before:]
    assert (event.event, event.outcome, event.channel) == ("credentials", "ok", "service")
    assert event.detail["exchange"] == "rfc8693"


def test_delegation_records_the_actor(broker: Running, cluster: TestIssuer) -> None:
    gateway = "system:serviceaccount:ops:gateway"
    subject = cluster.sign(
        cluster.service_account_claims(audience=BROKER_AUDIENCE, may_act={"sub": gateway, "iss": K8S_ISSUER})
    )
    actor = sa_token(cluster, namespace="ops", service_account="gateway")
    response = broker.exchange(
        subject,
        audience=PAYMENTS,
        actor_token=actor,
        actor_token_type=TOKEN_TYPE_JWT,
        auth=("gateway", GATEWAY_SECRET),
    )
    assert response.status_code == 200, response.text
    claims = verify_with_published_jwks(broker, response.json()["access_token"], PAYMENTS).claims
    assert claims["sub"] == "k8s-prod:system:serviceaccount:shop:api"
    assert claims["act"] == {"sub": gateway, "iss": K8S_ISSUER}
    assert claims["client_id"] == "gateway"


def test_private_key_jwt_client(broker: Running, cluster: TestIssuer, client_key: ECKey) -> None:
    now = int(time.time())
    assertion = jwt.encode(
        {"alg": "ES256", "kid": client_key.kid},
        {
            "iss": "ci-runner",
            "sub": "ci-runner",
            "aud": "http://127.0.0.1:8000/oauth2/token",
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_hex(8),
        },
        client_key,
    )
    params = {
        "audience": PAYMENTS,
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    response = broker.exchange(sa_token(cluster), **params)
    assert response.status_code == 200, response.text
    assert verify_with_published_jwks(broker, response.json()["access_token"], PAYMENTS).claims["client_id"] == (
        "ci-runner"
    )
    # The same assertion cannot authenticate twice.
    before = len(broker.events())
    replay = broker.exchange(sa_token(cluster), **params)
    broker.refused(replay, "invalid_client", "client.assertion_replay", before, status=401)


# ---------------------------------------------------------------- hostile inputs (THREATS.md)


def _claims(cluster: TestIssuer, **kwargs: Any) -> dict[str, Any]:
    return cluster.service_account_claims(audience=BROKER_AUDIENCE, **kwargs)


HOSTILE_SUBJECTS: dict[str, tuple[Callable[[TestIssuer, TestIssuer], str], str]] = {
    "alg_none": (lambda c, a: unsigned(_claims(c), {"kid": c.kid}), "workload.alg_none"),
    "hs256_with_public_key": (
        lambda c, a: hs256_with_public_key(_claims(c), c.public_pem(), c.kid),
        "workload.alg_not_allowed",
    ),
    "foreign_key": (lambda c, a: c.sign(_claims(c), key=a.key), "workload.bad_signature"),
    "unknown_crit": (
        lambda c, a: sign_raw({"alg": "RS256", "kid": c.kid, "crit": ["urn:x"], "urn:x": 1}, _claims(c), c.key),
        "workload.unknown_crit",
    ),
    "expired": (lambda c, a: c.sign(_claims(c, issued_ago=1200, lifetime=600)), "workload.expired"),
    "wrong_audience": (lambda c, a: c.token(audience="https://someone-else.test"), "workload.wrong_audience"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SUBJECTS))
@pytest.mark.parametrize("wants", ["broker_token", "aws_credentials"])
def test_hostile_subject_tokens(
    broker: Running, cluster: TestIssuer, attacker: TestIssuer, case: str, wants: str
) -> None:
    build, reason = HOSTILE_SUBJECTS[case]
    target = (
        {"audience": PAYMENTS}
        if wants == "broker_token"
        else {"audience": "shop-deployer", "requested_token_type": TOKEN_TYPE_AWS_CREDENTIALS}
    )
    before = len(broker.events())
    broker.refused(broker.exchange(build(cluster, attacker), **target), "invalid_request", reason, before)


def test_jku_header_is_never_fetched(broker: Running, cluster: TestIssuer, attacker: TestIssuer) -> None:
    with LoopbackServer() as evil:
        jku = evil.serve_json("/keys", attacker.jwks())
        token = attacker.sign(_claims(cluster), header={"jku": jku, "kid": attacker.kid})
        before = len(broker.events())
        response = broker.exchange(token, audience="shop-deployer", requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS)
        broker.refused(response, "invalid_request", "workload.key_reference_header", before)
        assert evil.hit_count() == 0


def test_id_token_as_subject(broker: Running, id_token: str) -> None:
    for token_type, reason in [
        (TOKEN_TYPE_ID_TOKEN, "workload.unsupported_token_type"),
        (TOKEN_TYPE_ACCESS_TOKEN, "workload.typ_mismatch"),
        (TOKEN_TYPE_JWT, "workload.token_type_not_allowed"),
    ]:
        before = len(broker.events())
        broker.refused(broker.exchange(id_token, token_type, audience=REPORTS), "invalid_request", reason, before)


def test_broker_token_as_subject(broker: Running, cluster: TestIssuer) -> None:
    own = broker.exchange(sa_token(cluster), audience=PAYMENTS).json()["access_token"]
    for token_type in (TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT):
        before = len(broker.events())
        response = broker.exchange(
            own, token_type, audience="shop-deployer", requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS
        )
        broker.refused(response, "invalid_request", "workload.untrusted_issuer", before)


def test_may_act_violation(broker: Running, cluster: TestIssuer) -> None:
    subject = cluster.sign(_claims(cluster, may_act={"sub": "system:serviceaccount:ops:gateway", "iss": K8S_ISSUER}))
    intruder = sa_token(cluster, namespace="shop", service_account="intruder")
    before = len(broker.events())
    response = broker.exchange(subject, audience=PAYMENTS, actor_token=intruder, actor_token_type=TOKEN_TYPE_JWT)
    broker.refused(response, "invalid_request", "may_act_violation", before)
    # No may_act at all: nobody may act for this subject.
    before = len(broker.events())
    response = broker.exchange(
        sa_token(cluster),
        audience="shop-deployer",
        requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS,
        actor_token=sa_token(cluster, namespace="ops", service_account="gateway"),
        actor_token_type=TOKEN_TYPE_JWT,
    )
    broker.refused(response, "invalid_request", "may_act_missing", before)


@pytest.mark.parametrize(
    ("token_kwargs", "params", "code", "reason"),
    [
        # A role the binding does not give this workload.
        (
            {},
            {"audience": "admin", "requested_token_type": TOKEN_TYPE_AWS_CREDENTIALS},
            "invalid_target",
            "role_not_granted",
        ),
        (
            {"namespace": "web"},
            {"audience": "shop-deployer", "requested_token_type": TOKEN_TYPE_AWS_CREDENTIALS},
            "invalid_target",
            "role_not_granted",
        ),
        (
            {},
            {"resource": "arn:aws:iam::123456789012:role/Nope", "requested_token_type": TOKEN_TYPE_AWS_CREDENTIALS},
            "invalid_target",
            "role_unknown",
        ),
        # An audience the workload is not bound to, or more scope than the binding has.
        ({}, {"audience": REPORTS}, "invalid_target", "audience_not_granted"),
        ({}, {"audience": "https://unknown.internal"}, "invalid_target", "audience_unknown"),
        ({}, {"audience": PAYMENTS, "scope": "payments:read payments:admin"}, "invalid_scope", "scope_not_granted"),
        ({}, {"audience": PAYMENTS, "resource": REPORTS}, "invalid_target", "target_multiple"),
        (
            {},
            {"audience": PAYMENTS, "requested_token_type": "urn:ietf:params:oauth:token-type:refresh_token"},
            "invalid_request",
            "requested_token_type_unsupported",
        ),
    ],
)
def test_escalation_beyond_the_binding(
    broker: Running, cluster: TestIssuer, token_kwargs: dict[str, Any], params: dict[str, str], code: str, reason: str
) -> None:
    before = len(broker.events())
    broker.refused(broker.exchange(sa_token(cluster, **token_kwargs), **params), code, reason, before)


def test_jti_replay(broker: Running, cluster: TestIssuer, idp: OidcProvider) -> None:
    token = sa_token(cluster)
    first = broker.exchange(token, audience="shop-deployer", requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS)
    assert first.status_code == 200, first.text
    issued = broker.issuances()
    before = len(broker.events())
    again = broker.exchange(token, audience="shop-deployer", requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS)
    assert again.status_code == 400 and again.json()["error"] == "invalid_request"
    assert broker.issuances() == issued
    [event] = broker.events()[before:]
    assert (event.outcome, event.reason) == ("denied", "jti_replay")
    # The IdP's access tokens are single-use here too.
    at = idp_access_token(idp)
    assert broker.exchange(at, TOKEN_TYPE_ACCESS_TOKEN, audience=REPORTS).status_code == 200
    before = len(broker.events())
    broker.refused(
        broker.exchange(at, TOKEN_TYPE_ACCESS_TOKEN, audience=REPORTS),
        "invalid_request",
        "jti_replay",
        before,
        issued=1,
    )


def test_client_authentication_failures(broker: Running, cluster: TestIssuer) -> None:
    before = len(broker.events())
    response = broker.exchange(sa_token(cluster), audience=PAYMENTS, auth=("gateway", "wrong-secret"))
    broker.refused(response, "invalid_client", "client.bad_secret", before, status=401)
    assert response.headers["www-authenticate"].startswith("Basic")  # RFC 6749 section 5.2
    assert response.headers["cache-control"] == "no-store"
    before = len(broker.events())
    response = broker.exchange(sa_token(cluster), audience=PAYMENTS, auth=("reader", GATEWAY_SECRET))
    broker.refused(response, "unauthorized_client", "client.grant_type_not_allowed", before, status=400)


def test_malformed_requests(broker: Running, cluster: TestIssuer) -> None:
    before = len(broker.events())
    response = httpx.post(f"{broker.url}/oauth2/token", data={"grant_type": "password", "username": "x"})
    broker.refused(response, "unsupported_grant_type", "grant_type_unsupported", before)
    before = len(broker.events())
    response = broker.exchange(sa_token(cluster), audience=PAYMENTS, actor_token="x")
    broker.refused(response, "invalid_request", "actor_token_type_missing", before)
    before = len(broker.events())
    body = urlencode([("grant_type", GRANT), ("subject_token", "a"), ("subject_token", "b")])
    response = httpx.post(
        f"{broker.url}/oauth2/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    broker.refused(response, "invalid_request", "repeated_param", before)


# ---------------------------------------------------------------- no AWS key anywhere


@pytest.fixture
def sts_recorder(sts_endpoint: str) -> Iterator[LoopbackServer]:
    with LoopbackServer(proxy_to=sts_endpoint) as proxy:
        yield proxy


def test_web_identity_mode_end_to_end(
    config: dict[str, Any],
    db_url: str,
    cluster: TestIssuer,
    sts_endpoint: str,
    sts_recorder: LoopbackServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The broker process has no AWS credentials of any kind.
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    config["aws"] = {**config["aws"], "mode": "web_identity", "sts_endpoint_url": sts_recorder.url}
    app = create_app(load_settings(None, **config))
    database = Database(db_url)
    try:
        with LiveServer(app) as server:
            broker = Running(server.url, database)
            response = broker.exchange(
                sa_token(cluster), requested_token_type=TOKEN_TYPE_AWS_CREDENTIALS, audience="shop-deployer"
            )
            assert response.status_code == 200, response.text
            creds = response.json()["aws_credentials"]

            # What went to STS: an unsigned AssumeRoleWithWebIdentity with a token the broker signed.
            [request] = [parse_qs(b.decode()) for b in sts_recorder.bodies]
            [headers] = sts_recorder.headers
            assert request["Action"] == ["AssumeRoleWithWebIdentity"]
            assert request["RoleArn"] == [DEPLOYER_ARN]
            assert "authorization" not in headers
            web_identity_token = request["WebIdentityToken"][0]
            # AWS IAM's side: verify it with the broker's published keys, as an OIDC provider's token.
            claims = verify_with_published_jwks(broker, web_identity_token, "sts.amazonaws.com").claims
            assert claims["sub"] == DEPLOYER_ARN
            assert claims["https://aws.amazon.com/source_identity"].startswith("system-serviceaccount-shop-api")
            assert claims["https://aws.amazon.com/tags"]["principal_tags"] == {
                "Workload": ["system:serviceaccount:shop:api"]
            }
            assert claims["exp"] - claims["iat"] <= 300

            caller = boto3.client(
                "sts",
                endpoint_url=sts_endpoint,
                region_name="us-east-1",
                aws_access_key_id=creds["AccessKeyId"],
                aws_secret_access_key=creds["SecretAccessKey"],
                aws_session_token=creds["SessionToken"],
            ).get_caller_identity()
            assert ":assumed-role/ShopDeployer/system-serviceaccount-shop-api" in caller["Arn"]
            assert broker.issuances() == 1
    finally:
        database.dispose()
