"""The broker's signing keys on SQLite and PostgreSQL: encryption at rest, JWKS, access tokens, rotation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from pydantic import SecretStr
from sqlalchemy import select

from broker.audit import AuditTrail
from broker.aws.sts import AssumeRoleRequest
from broker.errors import InvalidRequest, ServiceUnavailable
from broker.keys import Keys
from broker.oauth.tokens import AWS_SOURCE_IDENTITY_CLAIM, AWS_TAGS_CLAIM, TokenService
from broker.settings import Settings, load_settings
from broker.store.db import Database
from broker.store.models import AuditEvent, SigningKey
from tests.conftest import SECRET

ISSUER = "https://broker.test"
T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def settings_for(database: Database, **tokens: Any) -> Settings:
    return load_settings(
        None,
        public_url=ISSUER,
        database_url=database.url,
        secret_key=SECRET,
        oauth={"tokens": {"rotation_period_hours": 24, "access_token_ttl_seconds": 300, **tokens}},
    )


def service(database: Database, clock: FakeClock, *, secret: str = SECRET, **tokens: Any) -> TokenService:
    return TokenService(settings_for(database, **tokens), db=database, keys=Keys(SecretStr(secret)), clock=clock)


def decode(token: str, jwks: dict[str, Any], clock: FakeClock, audience: str) -> jwt.Token:
    """Verify as an internal service would: with the published JWKS only."""
    decoded = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256", "EdDSA"])
    jwt.JWTClaimsRegistry(
        now=int(clock().timestamp()),
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": audience},
        exp={"essential": True},
    ).validate(decoded.claims)
    return decoded


def test_first_use_creates_an_encrypted_key(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    jwks = tokens.jwks()
    assert len(jwks["keys"]) == 1
    public = jwks["keys"][0]
    assert public["alg"] == "ES256" and public["use"] == "sig" and public["crv"] == "P-256"
    assert "d" not in public
    with database.transaction() as s:
        row = s.scalars(select(SigningKey)).one()
        stored = row.private_jwk_encrypted
    # The private half is not in the table in any readable form.
    assert '"d"' not in stored and "P-256" not in stored
    # Another root secret cannot use it: fail closed with a clear reason.
    with pytest.raises(ServiceUnavailable) as info:
        service(database, clock, secret="another-root-secret-0123456789-abcdefghij").issue_access_token(
            subject="k8s:sa", audience="https://api.internal", client_id="k8s:sa"
        )
    assert info.value.reason == "signing_key_undecryptable"


def test_access_token_is_rfc9068_and_verifies_with_the_jwks(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    issued = tokens.issue_access_token(
        subject="k8s-prod:system:serviceaccount:shop:api",
        audience="https://payments.internal",
        client_id="ci",
        scope=("payments:read",),
        act={"sub": "gateway", "iss": "https://idp.test"},
    )
    decoded = decode(issued.token, tokens.jwks(), clock, "https://payments.internal")
    assert decoded.header == {"alg": "ES256", "kid": issued.kid, "typ": "at+jwt"}
    claims = decoded.claims
    assert claims["iss"] == ISSUER and claims["sub"] == "k8s-prod:system:serviceaccount:shop:api"
    assert claims["client_id"] == "ci" and claims["scope"] == "payments:read"
    assert claims["act"] == {"sub": "gateway", "iss": "https://idp.test"}
    assert claims["exp"] - claims["iat"] == 300 == issued.expires_in
    assert claims["jti"] == issued.jti
    assert tokens.verify_access_token(issued.token, audience="https://payments.internal")["jti"] == issued.jti
    with pytest.raises(InvalidRequest):
        tokens.verify_access_token(issued.token, audience="https://other.internal")
    # A verifier with a shorter TTL ceiling cannot be asked for more.
    longer = tokens.issue_access_token(subject="s", audience="a", client_id="c", ttl_seconds=3000)
    assert longer.expires_in == 300


def test_rotation_keeps_the_old_key_until_its_tokens_expire(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    before = tokens.issue_access_token(subject="s", audience="https://api.internal", client_id="c")
    clock.advance(seconds=10)
    new_kid = tokens.rotate(force=True)
    assert new_kid != before.kid
    after = tokens.issue_access_token(subject="s", audience="https://api.internal", client_id="c")
    assert after.kid == new_kid
    # A relying party that fetches the JWKS now can verify both tokens.
    jwks = tokens.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {before.kid, new_kid}
    decode(before.token, jwks, clock, "https://api.internal")
    decode(after.token, jwks, clock, "https://api.internal")
    # Once every token the old key could have signed has expired, the key leaves the JWKS...
    clock.now = T0 + timedelta(seconds=10) + tokens.max_token_lifetime + timedelta(seconds=1)
    tokens.rotate()
    jwks = tokens.jwks()
    assert {k["kid"] for k in jwks["keys"]} == {new_kid}
    # ... so a token signed with it no longer verifies (even ignoring its expiry).
    with pytest.raises(JoseError):
        jwt.decode(before.token, KeySet.import_key_set(jwks), algorithms=["ES256"])
    with database.transaction() as s:
        assert [r.kid for r in s.scalars(select(SigningKey))] == [new_kid]


def rotate_now(tokens: TokenService, *, revoke: bool) -> Any:
    return tokens.rotate_now(revoke=revoke, audit=AuditTrail(Keys(SecretStr(SECRET))), actor="operator:ops@host")


def test_rotate_now_keeps_the_old_key_published_until_its_tokens_expire(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    before = tokens.issue_access_token(subject="s", audience="https://api.internal", client_id="c")
    clock.advance(seconds=10)
    done = rotate_now(tokens, revoke=False)
    assert done.old_kid == before.kid and done.new_kid != before.kid and not done.revoked
    assert done.old_published_until == clock.now + tokens.max_token_lifetime
    assert tokens.issue_access_token(subject="s", audience="a", client_id="c").kid == done.new_kid
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {before.kid, done.new_kid}
    assert tokens.verify_access_token(before.token, audience="https://api.internal")["jti"] == before.jti
    assert [(k.kid, k.state) for k in tokens.key_states()] == [(done.new_kid, "current"), (before.kid, "retired")]
    with database.transaction() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.event == "signing_key_rotate")).one()
        assert (event.outcome, event.reason, event.principal, event.store) == (
            "ok",
            "rotated",
            "operator:ops@host",
            "cli",
        )
        assert event.detail["old_kid"] == before.kid and event.detail["new_kid"] == done.new_kid
    # Its tokens expire; then the old key leaves the JWKS and the table.
    clock.now = done.old_published_until + timedelta(seconds=1)
    assert [(k.kid, k.state) for k in tokens.key_states()] == [(done.new_kid, "current"), (before.kid, "expired")]
    tokens.rotate()
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {done.new_kid}


def test_rotate_now_with_revoke_refuses_the_old_keys_tokens_at_once(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    before = tokens.issue_access_token(subject="s", audience="https://api.internal", client_id="c")
    # Another process that loaded the old key before the revocation, and keeps it cached.
    other = service(database, clock)
    assert other.verify_access_token(before.token, audience="https://api.internal")["jti"] == before.jti
    done = rotate_now(tokens, revoke=True)
    assert done.revoked and done.old_published_until is None
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {done.new_kid}
    assert [(k.kid, k.state) for k in tokens.key_states()] == [(done.new_kid, "current"), (before.kid, "revoked")]
    for verifier in (tokens, other):
        with pytest.raises(InvalidRequest) as info:
            verifier.verify_access_token(before.token, audience="https://api.internal")
        assert info.value.reason == "broker_token_key_revoked"
    with database.transaction() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.event == "signing_key_rotate")).one()
        assert event.reason == "revoked" and event.detail["old_kid"] == before.kid
    after = tokens.issue_access_token(subject="s", audience="https://api.internal", client_id="c")
    assert after.kid == done.new_kid
    assert tokens.verify_access_token(after.token, audience="https://api.internal")["jti"] == after.jti
    # Once its tokens would have expired, the revoked key's row goes too.
    clock.now += tokens.max_token_lifetime + timedelta(seconds=1)
    tokens.rotate()
    with database.transaction() as s:
        assert before.kid not in {r.kid for r in s.scalars(select(SigningKey))}


def test_scheduled_rotation(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock, key_cache_seconds=60)
    first = tokens.issue_access_token(subject="s", audience="a", client_id="c").kid
    clock.advance(hours=23)
    assert tokens.issue_access_token(subject="s", audience="a", client_id="c").kid == first
    clock.advance(hours=1, seconds=1)
    second = tokens.issue_access_token(subject="s", audience="a", client_id="c").kid
    assert second != first
    assert {k["kid"] for k in tokens.jwks()["keys"]} == {first, second}


def test_concurrent_rotation_makes_exactly_one_key(database: Database) -> None:
    clock = FakeClock()
    service(database, clock).jwks()
    clock.advance(hours=25)
    processes = [service(database, clock) for _ in range(4)]
    barrier = threading.Barrier(len(processes))
    kids: list[str] = []
    errors: list[BaseException] = []

    def rotate(tokens: TokenService) -> None:
        barrier.wait()
        try:
            kids.append(tokens.issue_access_token(subject="s", audience="a", client_id="c").kid)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=rotate, args=(p,)) for p in processes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert len(set(kids)) == 1
    with database.transaction() as s:
        rows = s.scalars(select(SigningKey).order_by(SigningKey.generation)).all()
        assert [r.generation for r in rows] == [1, 2]
        assert rows[0].retired_at is not None and rows[1].retired_at is None


def test_algorithm_change_rotates_to_eddsa(database: Database) -> None:
    clock = FakeClock()
    old = service(database, clock).issue_access_token(subject="s", audience="a", client_id="c")
    tokens = service(database, clock, algorithm="EdDSA")
    new = tokens.issue_access_token(subject="s", audience="a", client_id="c")
    jwks = tokens.jwks()
    assert {(k["kid"], k["alg"]) for k in jwks["keys"]} == {(old.kid, "ES256"), (new.kid, "EdDSA")}
    assert decode(new.token, jwks, clock, "a").header["alg"] == "EdDSA"
    decode(old.token, jwks, clock, "a")


def test_web_identity_token_carries_the_role_and_the_workload(database: Database) -> None:
    clock = FakeClock()
    tokens = service(database, clock)
    token = tokens.web_identity_token(
        AssumeRoleRequest(
            role_arn="arn:aws:iam::123456789012:role/Deployer",
            role_session_name="system-serviceaccount-shop-api",
            source_identity="system-serviceaccount-shop-api",
            duration_seconds=900,
            tags={"Namespace": "shop"},
            transitive_tag_keys=("Namespace",),
        )
    )
    decoded = decode(token, tokens.jwks(), clock, "sts.amazonaws.com")
    assert decoded.header["typ"] == "JWT"
    claims = decoded.claims
    assert claims["sub"] == "arn:aws:iam::123456789012:role/Deployer"
    assert claims[AWS_SOURCE_IDENTITY_CLAIM] == "system-serviceaccount-shop-api"
    assert claims[AWS_TAGS_CLAIM] == {"principal_tags": {"Namespace": ["shop"]}, "transitive_tag_keys": ["Namespace"]}
    assert claims["exp"] - claims["iat"] == 300
