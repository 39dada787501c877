"""The JOSE owner: header policy, the JWKS cache against a real key host on loopback, claims through joserfc."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey

from broker import jose
from broker.http import HttpClient, HttpPolicy
from tests.support.loopback import LoopbackServer
from tests.support.workload_tokens import TestIssuer, b64json, sign_raw, unsigned

ISSUER = "https://issuer.test"
AUDIENCE = "https://broker.test"
PATH = "/jwks"


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> TestIssuer:
    return TestIssuer(ISSUER)


@pytest.fixture
def host(issuer: TestIssuer) -> Iterator[LoopbackServer]:
    with LoopbackServer() as server:
        server.serve_json(PATH, issuer.jwks())
        yield server


@pytest.fixture
def http() -> Iterator[HttpClient]:
    with HttpClient(HttpPolicy(connect_seconds=1, read_seconds=1)) as client:
        yield client


def cache(host: LoopbackServer, http: HttpClient, clock: Monotonic, **overrides: Any) -> jose.JwksCache:
    options: dict[str, Any] = {
        "http": http,
        "uri": host.url + PATH,
        "ttl_seconds": 300,
        "refresh_floor_seconds": 30,
        "monotonic": clock,
        **overrides,
    }
    return jose.JwksCache(**options)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "sub": "svc", "aud": AUDIENCE, "exp": now + 300, "iat": now, "jti": "j1", **overrides}


# ---------------------------------------------------------------------------------------------- header policy

HOSTILE_HEADERS: dict[str, tuple[dict[str, Any], str]] = {
    "no alg": ({}, "alg_none"),
    "alg none": ({"alg": "none"}, "alg_none"),
    "alg None": ({"alg": "None"}, "alg_none"),
    "HS256": ({"alg": "HS256"}, "alg_not_allowed"),
    "crit": ({"alg": "RS256", "crit": ["exp"]}, "crit"),
    "jku": ({"alg": "RS256", "jku": "https://evil.test/jwks"}, "key_reference"),
    "x5u": ({"alg": "RS256", "x5u": "https://evil.test/cert"}, "key_reference"),
    "jwk": ({"alg": "RS256", "jwk": {"kty": "OKP"}}, "key_reference"),
    "x5c": ({"alg": "RS256", "x5c": ["MII..."]}, "key_reference"),
    "kid with newline": ({"alg": "RS256", "kid": "a\nb"}, "bad_kid"),
    "kid too long": ({"alg": "RS256", "kid": "k" * 257}, "bad_kid"),
    "kid not a string": ({"alg": "RS256", "kid": 7}, "bad_kid"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
def test_header_policy_refuses(case: str) -> None:
    header, code = HOSTILE_HEADERS[case]
    with pytest.raises(jose.Refused) as info:
        jose.check_header(header, algorithms=("RS256", "ES256"))
    assert info.value.code == code


def test_header_policy_accepts_an_allowed_alg_and_sane_kid() -> None:
    assert jose.check_header({"alg": "ES256", "kid": "key-1", "typ": "JWT"}, algorithms=("ES256",)) == (
        "ES256",
        "key-1",
    )


@pytest.mark.parametrize(
    ("token", "code"),
    [("", "oversized"), ("a" * 9000, "oversized"), ("a.b", "malformed"), ("a.b.c.d.e", "malformed")],
)
def test_shape_is_checked_before_anything_is_decoded(token: str, code: str) -> None:
    with pytest.raises(jose.Refused) as info:
        jose.segments(token, max_bytes=8192)
    assert info.value.code == code


def test_segments_must_be_json_objects() -> None:
    with pytest.raises(jose.Refused) as info:
        jose.segments(f"{b64json([1])}.{b64json({})}.sig", max_bytes=8192)
    assert info.value.code == "malformed"


# ---------------------------------------------------------------------------------------------- JWKS cache


def test_keys_are_fetched_once_and_served_from_the_cache(
    issuer: TestIssuer, host: LoopbackServer, http: HttpClient
) -> None:
    keys = cache(host, http, Monotonic())
    assert keys.key(issuer.kid, "RS256").kid == issuer.kid
    assert keys.key(issuer.kid, "RS256").kid == issuer.kid
    assert host.hit_count(PATH) == 1


def test_rotation_unknown_kid_refetches_once_per_floor(
    issuer: TestIssuer, host: LoopbackServer, http: HttpClient
) -> None:
    clock = Monotonic()
    keys = cache(host, http, clock)
    keys.key(issuer.kid, "RS256")
    rotated = TestIssuer(ISSUER)
    host.serve_json(PATH, {"keys": issuer.jwks()["keys"] + rotated.jwks()["keys"]})
    # Right after a fetch, an unknown kid costs nothing: forged kids cannot make the broker hammer the issuer.
    for n in range(5):
        with pytest.raises(jose.Refused) as info:
            keys.key(f"forged-{n}", "RS256")
        assert info.value.code == "unknown_kid"
    with pytest.raises(jose.Refused):
        keys.key(rotated.kid, "RS256")
    assert host.hit_count(PATH) == 1
    # After the floor, one refetch picks up the rotated key; further lookups are cached.
    clock.now += 30
    assert keys.key(rotated.kid, "RS256").kid == rotated.kid
    assert keys.key(rotated.kid, "RS256").kid == rotated.kid
    assert host.hit_count(PATH) == 2


def test_the_ttl_expires_the_cached_keys(issuer: TestIssuer, host: LoopbackServer, http: HttpClient) -> None:
    clock = Monotonic()
    keys = cache(host, http, clock)
    keys.key(issuer.kid, "RS256")
    host.serve_json(PATH, {"keys": []})  # the issuer retires every key
    clock.now += 301
    with pytest.raises(jose.Refused) as info:
        keys.key(issuer.kid, "RS256")
    assert info.value.code == "unknown_kid"
    assert host.hit_count(PATH) == 2


def test_absent_kid_needs_exactly_one_fitting_key(issuer: TestIssuer, host: LoopbackServer, http: HttpClient) -> None:
    assert cache(host, http, Monotonic()).key(None, "RS256").kid == issuer.kid
    second = TestIssuer(ISSUER)
    host.serve_json(PATH, {"keys": issuer.jwks()["keys"] + second.jwks()["keys"]})
    with pytest.raises(jose.Refused) as info:
        cache(host, http, Monotonic()).key(None, "RS256")
    assert info.value.code == "ambiguous_kid"


def test_a_key_of_the_wrong_type_for_the_alg_is_refused(
    issuer: TestIssuer, host: LoopbackServer, http: HttpClient
) -> None:
    with pytest.raises(jose.Refused) as info:
        cache(host, http, Monotonic()).key(issuer.kid, "ES256")
    assert info.value.code == "key_alg_mismatch"


def test_private_symmetric_and_encryption_keys_are_never_used() -> None:
    rsa = RSAKey.generate_key(2048, parameters={"kid": "private"})
    ec = ECKey.generate_key("P-256", parameters={"kid": "enc"})
    okp = OKPKey.generate_key("Ed25519", parameters={"kid": "ok"})
    document = {
        "keys": [
            rsa.as_dict(private=True),
            {**ec.as_dict(private=False), "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "broken", "n": "!", "e": "AQAB"},
            okp.as_dict(private=False),
        ]
    }
    assert [k.kid for k in jose.public_keys(document)] == ["ok"]
    with pytest.raises(ValueError, match="not a JWKS"):
        jose.public_keys({"keys": "nope"})


def test_an_unreachable_host_is_unavailable_unless_keys_are_within_grace(
    issuer: TestIssuer, host: LoopbackServer, http: HttpClient
) -> None:
    clock = Monotonic()
    strict = cache(host, http, clock)
    lenient = cache(host, http, clock, stale_grace_seconds=600)
    strict.key(issuer.kid, "RS256")
    lenient.key(issuer.kid, "RS256")
    host.routes[PATH] = (500, b"{}")
    clock.now += 301
    with pytest.raises(jose.JwksUnavailable) as info:
        strict.key(issuer.kid, "RS256")
    assert info.value.code == "unavailable"
    assert lenient.key(issuer.kid, "RS256").kid == issuer.kid  # a briefly failing issuer: recent keys stay
    clock.now += 600
    with pytest.raises(jose.JwksUnavailable):
        lenient.key(issuer.kid, "RS256")


@pytest.mark.parametrize(("body", "code"), [(b"x" * 2048, "too_large"), (b"not json", "invalid"), (b"[]", "invalid")])
def test_a_hostile_key_set_is_refused(host: LoopbackServer, http: HttpClient, body: bytes, code: str) -> None:
    host.routes[PATH] = (200, body)
    with pytest.raises(jose.JwksUnavailable) as info:
        cache(host, http, Monotonic(), max_bytes=1024).key("any", "RS256")
    assert info.value.code == code


def test_inline_keys_are_never_fetched(issuer: TestIssuer, host: LoopbackServer) -> None:
    keys = jose.JwksCache(http=None, uri=None, jwks=issuer.jwks(), ttl_seconds=1, refresh_floor_seconds=1)
    assert keys.key(issuer.kid, "RS256").kid == issuer.kid
    with pytest.raises(jose.Refused):
        keys.key("other", "RS256")
    assert host.hit_count() == 0


# ---------------------------------------------------------------------------------------------- signature


def test_signature_is_verified_with_the_cached_key(issuer: TestIssuer, host: LoopbackServer, http: HttpClient) -> None:
    keys = cache(host, http, Monotonic())
    token = issuer.sign(claims())
    assert jose.verify_signature(token, keys.key(issuer.kid, "RS256"), "RS256")["sub"] == "svc"
    forger = TestIssuer(ISSUER)
    forged = forger.sign(claims(), header={"kid": issuer.kid})
    with pytest.raises(jose.Refused) as info:
        jose.verify_signature(forged, keys.key(issuer.kid, "RS256"), "RS256")
    assert info.value.code == "bad_signature"
    with pytest.raises(jose.Refused) as info:
        jose.verify_signature(unsigned(claims()), keys.key(issuer.kid, "RS256"), "RS256")
    assert info.value.code == "bad_signature"


def test_a_signed_payload_that_is_not_an_object_is_malformed(issuer: TestIssuer) -> None:
    assert jose.verify_signature(sign_raw({"alg": "RS256"}, {"x": 1}, issuer.key), issuer.key, "RS256") == {"x": 1}
    listed = sign_raw({"alg": "RS256"}, [1], issuer.key)  # type: ignore[arg-type]
    with pytest.raises(jose.Refused) as info:
        jose.verify_signature(listed, issuer.key, "RS256")
    assert info.value.code == "malformed"


# ---------------------------------------------------------------------------------------------- claims

RULES = jose.ClaimRules(
    issuer=ISSUER, audiences=(AUDIENCE,), required=("sub", "exp", "iat", "jti"), leeway=60, max_age_seconds=600
)
# Claims relative to the moment the test runs (not when the module was collected: a long run would age them).
BAD_CLAIMS: dict[str, tuple[Callable[[int], dict[str, Any]], str, str]] = {
    "wrong issuer": (lambda now: {"iss": "https://evil.test"}, "iss", "invalid"),
    "wrong audience": (lambda now: {"aud": ["https://other.test"]}, "aud", "invalid"),
    "audience not strings": (lambda now: {"aud": [1]}, "aud", "invalid"),
    "expired": (lambda now: {"exp": now - 61}, "exp", "expired"),
    "exp not a number": (lambda now: {"exp": "soon"}, "exp", "invalid"),
    "exp NaN": (lambda now: {"exp": float("nan")}, "exp", "invalid"),
    "not yet valid": (lambda now: {"nbf": now + 600}, "nbf", "invalid"),
    "issued in the future": (lambda now: {"iat": now + 600}, "iat", "invalid"),
    "issued too long ago": (lambda now: {"iat": now - 700}, "iat", "too_old"),
    "blank sub": (lambda now: {"sub": ""}, "sub", "invalid"),
    "jti not a string": (lambda now: {"jti": 5}, "jti", "invalid"),
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_claims_are_checked_by_the_registry(case: str) -> None:
    overrides, claim, problem = BAD_CLAIMS[case]
    now = time.time()
    with pytest.raises(jose.ClaimRefused) as info:
        jose.check_claims(claims(**overrides(int(now))), RULES, now=now)
    assert (info.value.claim, info.value.problem) == (claim, problem)


def test_missing_claims_are_reported_in_the_callers_order() -> None:
    incomplete = {k: v for k, v in claims().items() if k not in {"sub", "jti"}}
    with pytest.raises(jose.ClaimRefused) as info:
        jose.check_claims(incomplete, RULES, now=time.time())
    assert (info.value.claim, info.value.problem) == ("sub", "missing")


def test_leeway_absorbs_small_clock_differences() -> None:
    now = time.time()
    jose.check_claims(claims(exp=int(now) - 30, nbf=int(now) + 30, iat=int(now) + 30), RULES, now=now)


def test_subject_rule_pins_the_subject() -> None:
    rules = jose.ClaimRules(issuer="client-1", subject="client-1", audiences=(AUDIENCE,), required=("exp",))
    jose.check_claims(claims(iss="client-1", sub="client-1"), rules, now=time.time())
    with pytest.raises(jose.ClaimRefused) as info:
        jose.check_claims(claims(iss="client-1", sub="someone-else"), rules, now=time.time())
    assert info.value.claim == "sub"


# ---------------------------------------------------------------------------------------------- signing


@pytest.mark.parametrize("alg", ["ES256", "RS256", "EdDSA"])
def test_client_assertion_verifies_with_the_public_key(alg: str) -> None:
    key: ECKey | RSAKey | OKPKey = (
        ECKey.generate_key("P-256")
        if alg == "ES256"
        else RSAKey.generate_key(2048)
        if alg == "RS256"
        else OKPKey.generate_key("Ed25519")
    )
    pem = key.as_pem(private=True).decode()
    now = time.time()
    token = jose.client_assertion(client_id="c1", audience=AUDIENCE, pem=pem, alg=alg, kid="k1", now=now)
    header, _ = jose.segments(token, max_bytes=8192)
    assert header["kid"] == "k1" and header["alg"] == alg
    public = jose.public_keys({"keys": [{**key.as_dict(private=False), "kid": "k1"}]})[0]
    payload = jose.verify_signature(token, public, alg)
    rules = jose.ClaimRules(issuer="c1", subject="c1", audiences=(AUDIENCE,), required=("exp", "jti"))
    jose.check_claims(payload, rules, now=now)
    assert payload["exp"] - payload["iat"] == 60


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_a_generated_key_round_trips_and_verifies_against_its_published_set(alg: str) -> None:
    key = jose.generate_key(alg)
    kid = jose.key_id(key)
    public = jose.public_jwk(key, alg)
    assert public["kid"] == kid and public["use"] == "sig" and public["alg"] == alg and "d" not in public
    assert jose.public_jwk(jose.load_jwk(jose.private_jwk(key)), alg) == public
    now = time.time()
    token = jose.sign({"alg": alg, "kid": kid}, {"iss": "broker", "exp": int(now) + 60}, key)
    assert jose.unverified_kid(token) == kid
    rules = jose.ClaimRules(issuer="broker", required=("exp",))
    keys = jose.key_set({"keys": [public]})
    header, claims = jose.verify(
        token, keys=keys, algorithms=["ES256", "EdDSA"], max_bytes=jose.MAX_COMPACT_BYTES, rules=rules, now=now
    )
    assert header["kid"] == kid and claims["iss"] == "broker"
    with pytest.raises(jose.Refused) as info:
        jose.verify(token, keys=jose.key_set({"keys": []}), algorithms=[alg], max_bytes=8192, rules=rules, now=now)
    assert info.value.code == "unknown_kid" and not keys.fetched


def test_an_unreadable_header_has_no_kid() -> None:
    assert jose.unverified_kid("not a token") is None
    assert jose.unverified_kid(unsigned({}, {"kid": 7})) is None
