"""Workload-token verification against a real JWKS host on loopback: the good token and every hostile shape."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from broker.errors import InvalidRequest, ServiceUnavailable
from broker.oauth.workload import TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT, WorkloadVerifier
from broker.settings import WorkloadIssuerConfig
from tests.support.loopback import LoopbackServer
from tests.support.workload_tokens import K8S_ISSUER, TestIssuer, hs256_with_public_key, sign_raw, unsigned

AUDIENCE = "https://broker.test"
JWKS_PATH = "/openid/v1/jwks"


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def cluster() -> TestIssuer:
    return TestIssuer()


@pytest.fixture(scope="module")
def attacker() -> TestIssuer:
    return TestIssuer()


@pytest.fixture
def jwks_host(cluster: TestIssuer) -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        server.serve_json(JWKS_PATH, cluster.jwks())
        yield server


def issuer_config(jwks_host: LoopbackServer, **overrides: Any) -> WorkloadIssuerConfig:
    values: dict[str, Any] = {
        "name": "k8s-prod",
        "issuer": K8S_ISSUER,
        "jwks_uri": jwks_host.url + JWKS_PATH,
        "audiences": [AUDIENCE],
        "required_claims": ["kubernetes.io"],
        **overrides,
    }
    return WorkloadIssuerConfig(**values)


@pytest.fixture
def monotonic() -> FakeMonotonic:
    return FakeMonotonic()


@pytest.fixture
def verifier(jwks_host: LoopbackServer, monotonic: FakeMonotonic) -> Iterator[WorkloadVerifier]:
    v = WorkloadVerifier([issuer_config(jwks_host)], monotonic=monotonic)
    yield v
    v.close()


def test_service_account_token_verifies(
    verifier: WorkloadVerifier, cluster: TestIssuer, jwks_host: LoopbackServer
) -> None:
    verified = verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    identity = verified.identity
    assert identity.store == "k8s-prod"
    assert identity.issuer == K8S_ISSUER
    assert identity.subject == "system:serviceaccount:shop:api"
    assert identity.attributes["kubernetes.io.namespace"] == "shop"
    assert identity.attributes["kubernetes.io.serviceaccount.name"] == "api"
    assert "exp" not in identity.attributes and "aud" not in identity.attributes
    assert verified.principal == "k8s-prod:system:serviceaccount:shop:api"
    # The JWKS is fetched once and cached.
    verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert jwks_host.hit_count(JWKS_PATH) == 1


def _claims(cluster: TestIssuer, **kwargs: Any) -> dict[str, Any]:
    return cluster.service_account_claims(audience=AUDIENCE, **kwargs)


def _swap_payload(signed: str, other: str) -> str:
    """A valid signature over one payload, attached to another."""
    header, _, signature = signed.split(".")
    return f"{header}.{other.split('.')[1]}.{signature}"


HOSTILE: dict[str, tuple[Callable[[TestIssuer, TestIssuer], str], str]] = {
    "alg_none": (lambda c, a: unsigned(_claims(c), {"kid": c.kid}), "alg_none"),
    "alg_none_capitalised": (lambda c, a: unsigned(_claims(c), {"alg": "None", "kid": c.kid}), "alg_none"),
    "hs256_with_public_key": (lambda c, a: hs256_with_public_key(_claims(c), c.public_pem(), c.kid), "alg_not_allowed"),
    "foreign_key_claiming_our_kid": (lambda c, a: c.sign(_claims(c), key=a.key), "bad_signature"),
    "foreign_key_own_kid": (lambda c, a: c.sign(_claims(c), header={"kid": a.kid}, key=a.key), "unknown_kid"),
    "unknown_crit": (
        lambda c, a: sign_raw({"alg": "RS256", "kid": c.kid, "crit": ["urn:x"], "urn:x": 1}, _claims(c), c.key),
        "unknown_crit",
    ),
    "embedded_jwk": (
        lambda c, a: a.sign(_claims(c), header={"jwk": a.jwks()["keys"][0], "kid": a.kid}),
        "key_reference_header",
    ),
    "x5u": (lambda c, a: c.sign(_claims(c), header={"x5u": "http://127.0.0.1:9/cert.pem"}), "key_reference_header"),
    "expired": (lambda c, a: c.sign(_claims(c, issued_ago=1200, lifetime=600)), "expired"),
    "not_yet_valid": (lambda c, a: c.sign({**_claims(c), "nbf": int(time.time()) + 600}), "not_yet_valid"),
    "issued_in_future": (lambda c, a: c.sign({**_claims(c), "iat": int(time.time()) + 600}), "bad_iat"),
    "too_old": (lambda c, a: c.sign(_claims(c, issued_ago=7200, lifetime=86400)), "too_old"),
    "wrong_audience": (lambda c, a: c.token(audience="https://other.test"), "wrong_audience"),
    "no_exp": (lambda c, a: c.sign({k: v for k, v in _claims(c).items() if k != "exp"}), "no_exp"),
    "no_sub": (lambda c, a: c.sign({k: v for k, v in _claims(c).items() if k != "sub"}), "bad_sub"),
    "missing_required_claim": (
        lambda c, a: c.sign({k: v for k, v in _claims(c).items() if k != "kubernetes.io"}),
        "missing_claims",
    ),
    "untrusted_issuer": (lambda c, a: a.sign({**_claims(c), "iss": "https://evil.test"}), "untrusted_issuer"),
    "access_token_typ_as_jwt": (lambda c, a: c.sign(_claims(c), header={"typ": "at+jwt"}), "typ_mismatch"),
    "hostile_kid": (lambda c, a: c.sign(_claims(c), header={"kid": "../../etc/passwd\n"}), "bad_kid"),
    "huge_kid": (lambda c, a: c.sign(_claims(c), header={"kid": "k" * 5000}), "bad_kid"),
    "oversized": (lambda c, a: c.sign({**_claims(c), "pad": "x" * 20000}), "oversized"),
    "jwe_shaped": (lambda c, a: "a.b.c.d.e", "malformed"),
    "garbage": (lambda c, a: "not-a-jwt", "malformed"),
    "tampered_payload": (
        lambda c, a: _swap_payload(c.token(audience=AUDIENCE), c.token(audience=AUDIENCE, namespace="kube-system")),
        "bad_signature",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tokens_are_refused(
    case: str, verifier: WorkloadVerifier, cluster: TestIssuer, attacker: TestIssuer
) -> None:
    build, reason = HOSTILE[case]
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(build(cluster, attacker), token_type=TOKEN_TYPE_JWT)
    assert info.value.code == "invalid_request"
    assert info.value.reason == f"workload.{reason}"


def test_jku_header_is_never_fetched(
    verifier: WorkloadVerifier, cluster: TestIssuer, attacker: TestIssuer, jwks_host: LoopbackServer
) -> None:
    with LoopbackServer() as evil:
        jku = evil.serve_json("/jwks.json", attacker.jwks())
        token = attacker.sign(_claims(cluster), header={"jku": jku, "kid": attacker.kid})
        with pytest.raises(InvalidRequest) as info:
            verifier.verify(token, token_type=TOKEN_TYPE_JWT)
        assert info.value.reason == "workload.key_reference_header"
        assert evil.hit_count() == 0
    # Not even the issuer's own JWKS was needed to refuse it.
    assert jwks_host.hit_count() == 0


def test_unknown_token_types_are_refused(verifier: WorkloadVerifier, cluster: TestIssuer) -> None:
    for token_type in (TOKEN_TYPE_ID_TOKEN, "urn:ietf:params:oauth:token-type:saml2", "jwt"):
        with pytest.raises(InvalidRequest) as info:
            verifier.verify(cluster.token(audience=AUDIENCE), token_type=token_type)
        assert info.value.reason == "workload.unsupported_token_type"
    # Kubernetes tokens are accepted as plain JWTs only (issuer config token_types: [jwt]).
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_ACCESS_TOKEN)
    assert info.value.reason == "workload.token_type_not_allowed"


def test_absent_kid_is_accepted_only_when_one_key_fits(jwks_host: LoopbackServer, cluster: TestIssuer) -> None:
    verifier = WorkloadVerifier([issuer_config(jwks_host)])
    token = cluster.sign(_claims(cluster), header={"kid": None})
    assert verifier.verify(token, token_type=TOKEN_TYPE_JWT).identity.subject.endswith(":api")
    other = TestIssuer()
    jwks_host.serve_json(JWKS_PATH, {"keys": cluster.jwks()["keys"] + other.jwks()["keys"]})
    verifier = WorkloadVerifier([issuer_config(jwks_host)])
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(token, token_type=TOKEN_TYPE_JWT)
    assert info.value.reason == "workload.unknown_kid"


def test_unknown_kid_refetches_once_then_rate_limits(
    verifier: WorkloadVerifier, cluster: TestIssuer, jwks_host: LoopbackServer, monotonic: FakeMonotonic
) -> None:
    verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert jwks_host.hit_count() == 1
    monotonic.now += 60
    # The cluster rotates its key: the new kid is unknown, one refetch finds it.
    rotated = TestIssuer()
    jwks_host.serve_json(JWKS_PATH, {"keys": cluster.jwks()["keys"] + rotated.jwks()["keys"]})
    assert verifier.verify(rotated.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert jwks_host.hit_count() == 2
    # A flood of bogus kids right after costs no further fetch within the refresh interval.
    for n in range(20):
        with pytest.raises(InvalidRequest) as info:
            verifier.verify(cluster.sign(_claims(cluster), header={"kid": f"bogus-{n}"}), token_type=TOKEN_TYPE_JWT)
        assert info.value.reason == "workload.unknown_kid"
    assert jwks_host.hit_count() == 2
    # After the interval, one more refetch is allowed.
    monotonic.now += 31
    with pytest.raises(InvalidRequest):
        verifier.verify(cluster.sign(_claims(cluster), header={"kid": "bogus-late"}), token_type=TOKEN_TYPE_JWT)
    assert jwks_host.hit_count() == 3


def test_slow_jwks_host_times_out_and_fails_closed(jwks_host: LoopbackServer, cluster: TestIssuer) -> None:
    jwks_host.delay_seconds = 3
    verifier = WorkloadVerifier([issuer_config(jwks_host, http_timeout_seconds=0.3)])
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable) as info:
        verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert time.monotonic() - started < 2
    assert info.value.reason == "workload.jwks_unavailable"
    assert info.value.retry_after


def test_inline_jwks_needs_no_fetch(jwks_host: LoopbackServer, cluster: TestIssuer) -> None:
    config = issuer_config(jwks_host, jwks_uri=None, jwks=cluster.jwks())
    verifier = WorkloadVerifier([config])
    assert verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert jwks_host.hit_count() == 0


def test_single_use_issuers_require_jti(jwks_host: LoopbackServer, cluster: TestIssuer) -> None:
    verifier = WorkloadVerifier([issuer_config(jwks_host, single_use_jti=True)])
    claims = {k: v for k, v in _claims(cluster).items() if k != "jti"}
    with pytest.raises(InvalidRequest) as info:
        verifier.verify(cluster.sign(claims), token_type=TOKEN_TYPE_JWT)
    assert info.value.reason == "workload.no_jti"
    verified = verifier.verify(cluster.token(audience=AUDIENCE), token_type=TOKEN_TYPE_JWT)
    assert verified.single_use and verified.jti


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"algorithms": ["HS256"]}, "algorithms"),
        ({"algorithms": ["none"]}, "algorithms"),
        ({"jwks_uri": "http://jwks.example.com/keys"}, "https://"),
        ({"jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}, "RSA, EC or OKP"),
        ({"jwks": {"keys": [{"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "d": "c"}]}}, "public"),
        ({"audiences": []}, "audiences"),
    ],
)
def test_issuer_config_refuses_weak_settings(
    jwks_host: LoopbackServer, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        issuer_config(jwks_host, **overrides)
    assert message in str(info.value)
