"""The store contract, run on SQLite and PostgreSQL: replay guard, sessions, sign-ins in flight."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta

import pytest

from broker.errors import ReplayDetected
from broker.identity import Identity
from broker.store import queries
from broker.store.db import Database

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def test_replay_guard_refuses_second_use(database: Database) -> None:
    with database.transaction() as s:
        queries.consume_once(s, kind="saml_assertion", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        queries.consume_once(s, kind="saml_assertion", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))
    assert info.value.reason == "saml_assertion_replay"
    # Another kind with the same key is a different value.
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))


def test_replay_conflict_leaves_the_transaction_usable(database: Database) -> None:
    with database.transaction() as s:
        queries.consume_once(s, kind="nonce", key_hmac="n", expires_at=NOW)
    with database.transaction() as s:
        with pytest.raises(ReplayDetected):
            queries.consume_once(s, kind="nonce", key_hmac="n", expires_at=NOW)
        queries.consume_once(s, kind="nonce", key_hmac="other", expires_at=NOW)
    with pytest.raises(ReplayDetected), database.transaction() as s:
        queries.consume_once(s, kind="nonce", key_hmac="other", expires_at=NOW)


def test_replay_conflict_without_savepoint_abandons_the_transaction(database: Database) -> None:
    """The hot paths' form: one round trip, and a replay takes every other write of its transaction with it."""
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="spent", expires_at=NOW, savepoint=False)
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="fresh", expires_at=NOW, savepoint=False)
        queries.consume_once(s, kind="jti", key_hmac="spent", expires_at=NOW, savepoint=False)
    assert info.value.reason == "jti_replay"
    # "fresh" was rolled back with the transaction: it can still be spent once.
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="fresh", expires_at=NOW, savepoint=False)


def _race(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]) -> None:
    database = Database(url)
    barrier.wait()
    try:
        with database.transaction() as s:
            queries.consume_once(s, kind="jti", key_hmac="raced", expires_at=datetime.now(UTC))
        results.put("won")
    except ReplayDetected:
        results.put("replay")
    finally:
        database.dispose()


def test_replay_guard_holds_across_two_processes(database: Database, db_url: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results: multiprocessing.Queue[str] = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(db_url, barrier, results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert sorted(results.get(timeout=5) for _ in procs) == ["replay", "won"]


def test_purge_removes_only_expired_rows(database: Database) -> None:
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="old", expires_at=NOW - timedelta(seconds=1))
        queries.consume_once(s, kind="jti", key_hmac="live", expires_at=NOW + timedelta(hours=1))
    with database.transaction() as s:
        assert queries.purge_expired(s, now=NOW) == 1
    with database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="old", expires_at=NOW + timedelta(hours=1))
    with pytest.raises(ReplayDetected), database.transaction() as s:
        queries.consume_once(s, kind="jti", key_hmac="live", expires_at=NOW)


def test_login_request_is_taken_once(database: Database) -> None:
    with database.transaction() as s:
        queries.save_login_request(
            s,
            state_hmac="st",
            store="corp",
            browser_hmac="b",
            data={"nonce": "n"},
            now=NOW,
            expires_at=NOW + timedelta(minutes=10),
        )
    with database.transaction() as s:
        row = queries.take_login_request(s, state_hmac="st")
        assert row is not None and row.data == {"nonce": "n"}
    with database.transaction() as s:
        assert queries.take_login_request(s, state_hmac="st") is None


HOSTILE = "quote' \" -- ; DROP TABLE principals; \u202e rtl " + "x" * 65536


def test_hostile_identity_values_are_stored_verbatim(database: Database) -> None:
    identity = Identity(
        subject=HOSTILE,
        issuer="https://idp",
        store="corp",
        username=HOSTILE,
        email=HOSTILE,
        groups=frozenset({HOSTILE}),
        attributes={"team": HOSTILE},
    )
    with database.transaction() as s:
        principal = queries.upsert_principal(s, identity=identity, now=NOW)
        queries.create_session(
            s,
            id_hmac="h",
            principal_id=principal.id,
            identity=identity,
            now=NOW,
            expires_at=NOW + timedelta(hours=1),
            client_ip=None,
            user_agent=HOSTILE,
        )
    with database.transaction() as s:
        row = queries.get_session(s, id_hmac="h")
        assert row is not None
        assert Identity.from_json(row.identity) == identity
        assert row.user_agent == HOSTILE
        assert row.created_at == NOW  # time zones survive both backends


def test_touch_principal_inserts_once_then_updates_in_place(database: Database) -> None:
    first = Identity(subject="u1", issuer="https://idp", store="corp", username="ann", groups=frozenset({"b", "a"}))
    with database.transaction() as s:
        created, disabled = queries.touch_principal(s, identity=first, now=NOW)
    assert not disabled
    later = NOW + timedelta(hours=1)
    renamed = Identity(subject="u1", issuer="https://idp", store="corp", username="anne", email="anne@corp.test")
    with database.transaction() as s:
        assert queries.touch_principal(s, identity=renamed, now=later).id == created
        # The same row as upsert_principal reads and writes: one principal per (store, subject).
        row = queries.upsert_principal(s, identity=renamed, now=later)
        assert row.id == created
        assert (row.username, row.email, row.groups, row.disabled) == ("anne", "anne@corp.test", [], False)
        assert (row.first_seen_at, row.last_seen_at) == (NOW, later)
    other = Identity(subject="u1", issuer="https://idp", store="other", username="ann")
    with database.transaction() as s:
        assert queries.touch_principal(s, identity=other, now=NOW).id != created
