"""The keyring at the storage level: an audit trail that spans a rotation, a missing key named rather than
called tampering, re-sealing that refuses a tampered trail, and the status of what is stored under which key."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import SecretStr
from sqlalchemy import select

from broker.audit import AuditTrail, VerifyResult
from broker.encryption import Cipher, Undecryptable
from broker.errors import KeysUnusable
from broker.keys import Keys
from broker.store.db import Database
from broker.store.models import AuditEvent, AuditSegment

OLD = ("k0", SecretStr("old-secret-0123456789-abcdefghijklmnopqrstuvwxyz"))
NEW = ("k1", SecretStr("new-secret-0123456789-abcdefghijklmnopqrstuvwxyz"))
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
URL = "https://broker.example.com"


def clock() -> datetime:
    return NOW


def fill(database: Database, trail: AuditTrail, n: int = 3) -> None:
    for i in range(n):
        trail.record(database, event="login", outcome="ok", reason="authenticated", principal=f"user{i}")


def verify(database: Database, trail: AuditTrail) -> VerifyResult:
    with database.transaction() as s:
        return trail.verify_store(s)


def rotated_trail(database: Database) -> AuditTrail:
    """Three events sealed under k0, then three under k1 (sealed and not)."""
    before = AuditTrail(Keys([OLD]), clock)
    fill(database, before)
    assert before.seal(database) == 3
    after = AuditTrail(Keys([NEW, OLD]), clock)
    fill(database, after)
    assert after.seal(database) == 3
    fill(database, after, 2)
    return after


def test_a_plain_secret_key_is_the_keyring_k0() -> None:
    plain = Keys(OLD[1])
    listed = Keys([NEW, OLD])
    assert plain.ids == ("k0",) and listed.current_id == "k1"
    assert listed.mac("session", "abc", "k0") == plain.mac("session", "abc")
    assert listed.macs("session", "abc") == [listed.mac("session", "abc"), plain.mac("session", "abc")]
    assert listed.verify("csrf", "x", plain.mac("csrf", "x")) and not Keys([NEW]).verify(
        "csrf", "x", plain.mac("csrf", "x")
    )
    with pytest.raises(ValueError, match="unique"):
        Keys([OLD, ("k0", NEW[1])])


def test_cipher_names_its_key_and_refuses_what_it_cannot_open() -> None:
    old = Cipher([("k0", b"0" * 32)])
    sealed = old.seal(b"secret", aad=b"owner-1")
    both = Cipher([("k1", b"1" * 32), ("k0", b"0" * 32)])
    assert sealed.startswith("v1.k0.") and both.open(sealed, aad=b"owner-1") == ("k0", b"secret")
    assert both.needs_rotation(sealed) and not both.needs_rotation(both.seal(b"x", aad=b"a"))
    with pytest.raises(Undecryptable) as refused:
        both.open(sealed, aad=b"owner-2")  # copied to another owner's row
    assert refused.value.key_id == "k0"
    kid, body = old.seal_body(b"jwk", aad=b"kid")
    assert both.open(body, aad=b"kid", key_id=kid) == ("k0", b"jwk") and both.open(body, aad=b"kid")[0] == "k0"
    with pytest.raises(Undecryptable):
        Cipher([("k1", b"1" * 32)]).open(sealed, aad=b"owner-1")


def test_a_trail_that_spans_a_rotation_verifies_with_both_keys(database: Database) -> None:
    after = rotated_trail(database)
    result = verify(database, after)
    assert (result.ok, result.checked, result.segments, result.unsealed) == (True, 8, 3, 2), result
    with database.transaction() as s:
        ids = {row.key_id for row in s.scalars(select(AuditEvent))}
        segment_ids = [row.key_id for row in s.scalars(select(AuditSegment).order_by(AuditSegment.number))]
    assert ids == {"k0", "k1"} and segment_ids == ["k0", "k0", "k1"]


def test_a_missing_key_is_named_not_called_tampering(database: Database) -> None:
    rotated_trail(database)
    result = verify(database, AuditTrail(Keys([NEW]), clock))
    assert not result.ok and result.segment == 0
    assert result.problem == (
        "the segment cannot be checked: it was made with secret key 'k0', which is not configured: list it again "
        "in secret_keys (remove an old key only after `broker keys re-encrypt`)"
    )


def test_reseal_moves_the_trail_to_the_newest_key(database: Database) -> None:
    after = rotated_trail(database)
    assert after.reseal(database) == 8
    only_new = AuditTrail(Keys([NEW]), clock)
    result = verify(database, only_new)
    assert (result.ok, result.checked) == (True, 8), result
    # Still tamper-evident under the new key.
    with database.transaction() as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.segment == 1)).first()
        assert row is not None
        row.reason = "forged"
    edited = verify(database, only_new)
    assert not edited.ok and "edited" in (edited.problem or "")


def test_reseal_refuses_a_tampered_trail_and_changes_nothing(database: Database) -> None:
    after = rotated_trail(database)
    with database.transaction() as s:
        row = s.scalars(select(AuditEvent).where(AuditEvent.segment == 2)).first()
        assert row is not None
        row.principal = "mallory"
    with database.transaction() as s:
        before = sorted((r.seq, r.mac, r.key_id) for r in s.scalars(select(AuditEvent)))
    with pytest.raises(KeysUnusable) as refused:
        after.reseal(database)
    assert refused.value.reason == "audit_unverifiable" and "edited" in refused.value.message
    with database.transaction() as s:
        assert sorted((r.seq, r.mac, r.key_id) for r in s.scalars(select(AuditEvent))) == before


def test_a_one_time_value_used_before_a_rotation_is_refused_after_it(database: Database) -> None:
    from broker.errors import ReplayDetected
    from broker.store import queries

    before, after = Keys([OLD]), Keys([NEW, OLD])
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac=before.macs("workload-jti", "iss\nj1"), expires_at=NOW)
    with pytest.raises(ReplayDetected) as replay, database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac=after.macs("workload-jti", "iss\nj1"), expires_at=NOW)
    assert replay.value.reason == "jti_replay"


def test_the_keyring_is_configured_with_ids_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    from broker.errors import ConfigError
    from broker.settings import load_settings

    monkeypatch.delenv("BROKER_SECRET_KEY", raising=False)
    monkeypatch.setenv("SECRET_KEY_K1", NEW[1].get_secret_value())
    listed = [{"id": "k1", "value": "env:SECRET_KEY_K1"}, {"id": "k0", "value": OLD[1].get_secret_value()}]
    settings = load_settings(None, public_url=URL, secret_keys=listed)
    assert [(kid, secret.get_secret_value()) for kid, secret in settings.root_keys] == [
        ("k1", NEW[1].get_secret_value()),
        ("k0", OLD[1].get_secret_value()),
    ]
    assert load_settings(None, public_url=URL, secret_key=OLD[1].get_secret_value()).root_keys == [("k0", OLD[1])]
    with pytest.raises(ConfigError) as both:
        load_settings(None, public_url=URL, secret_key=OLD[1].get_secret_value(), secret_keys=listed)
    assert both.value.problems == [
        (
            "(top level)",
            "set secret_key (one key) or secret_keys (a list of {id, value}, newest first), not both or neither",
        )
    ]
    with pytest.raises(ConfigError) as twice:
        load_settings(None, public_url=URL, secret_keys=[listed[1], {**listed[0], "id": "k0"}])
    assert twice.value.problems == [("secret_keys", "every key needs its own id")]
    with pytest.raises(ConfigError) as short:
        load_settings(None, public_url=URL, secret_keys=[{"id": "k1", "value": "too-short"}])
    assert short.value.problems == [("secret_keys", "key k1: must be at least 32 characters")]
