"""broker.store.replay on SQLite and PostgreSQL: a one-time value is accepted once, by any process."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from broker.errors import ReplayDetected
from broker.store import replay, sessions, tokens
from broker.store.db import Database
from broker.store.models import ReplayGuard
from tests.store.conftest import NOW, assert_refused_by_database, identity


def test_replay_guard_refuses_second_use(database: Database) -> None:
    with database.transaction() as s:
        replay.consume_once(s, kind="saml_assertion", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        replay.consume_once(s, kind="saml_assertion", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))
    assert info.value.reason == "saml_assertion_replay"
    # Another kind with the same key is a different value.
    with database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="k1", expires_at=NOW + timedelta(minutes=5))


@pytest.mark.parametrize("kind", ["jti", "saml_assertion", "nonce"])
def test_one_time_values_are_unique_in_the_database(database: Database, kind: str) -> None:
    with database.transaction() as s:
        replay.consume_once(s, kind=kind, key_hmac="once", expires_at=NOW)
    assert_refused_by_database(database, ReplayGuard, kind=kind, key_hmac="once", expires_at=NOW)


def test_replay_conflict_leaves_the_transaction_usable(database: Database) -> None:
    with database.transaction() as s:
        replay.consume_once(s, kind="nonce", key_hmac="n", expires_at=NOW)
    with database.transaction() as s:
        with pytest.raises(ReplayDetected) as info:
            replay.consume_once(s, kind="nonce", key_hmac="n", expires_at=NOW)
        assert info.value.reason == "nonce_replay"
        replay.consume_once(s, kind="nonce", key_hmac="other", expires_at=NOW)
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        replay.consume_once(s, kind="nonce", key_hmac="other", expires_at=NOW)
    assert info.value.reason == "nonce_replay"


def test_replay_conflict_without_savepoint_abandons_the_transaction(database: Database) -> None:
    """The hot paths' form: one round trip, and a replay takes every other write of its transaction with it."""
    with database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="spent", expires_at=NOW, savepoint=False)
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="fresh", expires_at=NOW, savepoint=False)
        replay.consume_once(s, kind="jti", key_hmac="spent", expires_at=NOW, savepoint=False)
    assert info.value.reason == "jti_replay"
    # "fresh" was rolled back with the transaction: it can still be spent once.
    with database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="fresh", expires_at=NOW, savepoint=False)


def _race(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue[str]) -> None:
    database = Database(url)
    barrier.wait()
    try:
        with database.transaction() as s:
            replay.consume_once(s, kind="jti", key_hmac="raced", expires_at=datetime.now(UTC))
        results.put("won")
    except ReplayDetected as exc:
        results.put(exc.reason)
    finally:
        database.dispose()


def test_replay_guard_holds_across_two_processes(database: Database, db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    results: multiprocessing.Queue[str] = context.Queue()
    workers = [context.Process(target=_race, args=(db_url, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert sorted(results.get(timeout=5) for _ in workers) == ["jti_replay", "won"]


def test_purge_removes_only_expired_rows(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    past, future = NOW - timedelta(seconds=1), NOW + timedelta(hours=1)
    with database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="old", expires_at=past)
        replay.consume_once(s, kind="jti", key_hmac="live", expires_at=future)
        for name, end in (("old", past), ("live", future)):
            sessions.save_login_request(
                s, state_hmac=name, store="corp", browser_hmac="b", data={}, now=NOW, expires_at=end
            )
            sessions.create_session(
                s, id_hmac=name, principal_id=pid, identity=identity(), now=NOW, expires_at=end, client_ip=None,
                user_agent=None,
            )  # fmt: skip
            sessions.save_saml_session(
                s, session_hmac=name, store="saml", name_id_hmac="n", logout={}, now=NOW, expires_at=end
            )
            tokens.add_authorization_code(
                s, code_hmac=name, client_id="cli", redirect_uri="http://127.0.0.1/cb", code_challenge="c",
                identity={}, session_expires_at=end, created_at=NOW, expires_at=end,
            )  # fmt: skip
    with database.transaction() as s:
        assert replay.purge_expired(s, now=NOW) == 5
    with database.transaction() as s:
        assert sessions.get_login_request(s, state_hmac="live") is not None
        assert sessions.get_session(s, id_hmac="live") is not None
        assert tokens.get_authorization_code(s, code_hmac="live") is not None
        assert tokens.get_authorization_code(s, code_hmac="old") is None
    with pytest.raises(ReplayDetected) as info, database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="live", expires_at=NOW)
    assert info.value.reason == "jti_replay"
    with database.transaction() as s:
        replay.consume_once(s, kind="jti", key_hmac="old", expires_at=NOW)
