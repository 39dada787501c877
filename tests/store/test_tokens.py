"""broker.store.tokens on SQLite and PostgreSQL: device authorizations, authorization codes, refresh families."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from broker.store import tokens
from broker.store.db import Database
from broker.store.models import AuthorizationCode, DeviceAuthorization, RefreshToken
from tests.store.conftest import NOW, assert_refused_by_database

HOUR = timedelta(hours=1)


def device(code: str, user_code: str) -> dict[str, Any]:
    return {
        "device_code_hmac": code, "user_code_hmac": user_code, "client_id": "broker-cli", "status": "pending",
        "interval_seconds": 5, "created_at": NOW, "expires_at": NOW + HOUR,
    }  # fmt: skip


def code(name: str, *, expires: timedelta = HOUR) -> dict[str, Any]:
    return {
        "code_hmac": name, "client_id": "broker-cli", "redirect_uri": "http://127.0.0.1:5000/cb",
        "code_challenge": "c" * 43, "identity": {"subject": "u1"}, "session_expires_at": NOW + HOUR,
        "created_at": NOW, "expires_at": NOW + expires,
    }  # fmt: skip


def test_device_authorization_moves_once(database: Database) -> None:
    with database.transaction() as s:
        assert tokens.add_device_authorization(s, **device("d1", "u1"))
        assert tokens.get_device_authorization(s) is None
    with database.transaction() as s:
        by_user = tokens.get_device_authorization(s, user_code_hmac="u1")
        assert by_user is not None and by_user.device_code_hmac == "d1"
        tokens.record_device_poll(s, device_code_hmac="d1", now=NOW + HOUR / 60, interval_seconds=10)
        assert tokens.move_device_authorization(
            s, device_code_hmac="d1", from_status="pending", to_status="approved", decided_at=NOW
        )
        # A second approver, or a denial racing it, finds it no longer pending.
        assert not tokens.move_device_authorization(s, device_code_hmac="d1", from_status="pending", to_status="denied")
    with database.transaction() as s:
        row = tokens.get_device_authorization(s, device_code_hmac="d1")
        assert row is not None
        assert (row.status, row.decided_at, row.last_polled_at, row.interval_seconds) == (
            "approved",
            NOW,
            NOW + HOUR / 60,
            10,
        )


def test_device_and_user_codes_are_unique_in_the_database(database: Database) -> None:
    with database.transaction() as s:
        assert tokens.add_device_authorization(s, **device("d1", "u1"))
        # A colliding user code is refused and the transaction stays usable for the next draw.
        assert not tokens.add_device_authorization(s, **device("d2", "u1"))
        assert tokens.add_device_authorization(s, **device("d2", "u2"))
    assert_refused_by_database(database, DeviceAuthorization, **device("d1", "u9"))
    assert_refused_by_database(database, DeviceAuthorization, **device("d9", "u2"))


def test_authorization_code_is_consumed_once(database: Database) -> None:
    with database.transaction() as s:
        tokens.add_authorization_code(s, **code("c1"))
    assert_refused_by_database(database, AuthorizationCode, **code("c1"))
    with database.transaction() as s:
        assert tokens.get_authorization_code(s, code_hmac="nope") is None
        assert tokens.consume_authorization_code(s, code_hmac="c1", now=NOW)
        assert not tokens.consume_authorization_code(s, code_hmac="c1", now=NOW)
        tokens.link_authorization_code(s, code_hmac="c1", family_id="f1")
    with database.transaction() as s:
        row = tokens.get_authorization_code(s, code_hmac="c1")
        assert row is not None and (row.consumed_at, row.family_id) == (NOW, "f1")


def family(database: Database, pid: int, family_id: str, *, expires: timedelta = HOUR) -> None:
    with database.transaction() as s:
        tokens.create_refresh_family(
            s, token_hmac=f"{family_id}-t0", id=family_id, principal_id=pid, client_id="broker-cli",
            grant_type="device_code", identity={"subject": "u1"}, created_at=NOW, expires_at=NOW + expires,
        )  # fmt: skip


def test_refresh_tokens_rotate_once(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    family(database, pid, "f1")
    with database.transaction() as s:
        found = tokens.get_refresh_token(s, token_hmac="f1-t0")
        assert found is not None and (found[0].generation, found[1].id) == (0, "f1")
        assert tokens.get_refresh_token(s, token_hmac="nope") is None
        assert tokens.rotate_refresh_token(
            s, token_hmac="f1-t0", family_id="f1", generation=1, new_token_hmac="f1-t1", now=NOW
        )
        # The old token again (a reuse, or the loser of a race) rotates nothing.
        assert not tokens.rotate_refresh_token(
            s, token_hmac="f1-t0", family_id="f1", generation=1, new_token_hmac="f1-tx", now=NOW
        )
    with database.transaction() as s:
        old = tokens.get_refresh_token(s, token_hmac="f1-t0")
        assert old is not None and old[0].rotated_at == NOW
        assert tokens.get_refresh_token(s, token_hmac="f1-tx") is None
    assert_refused_by_database(database, RefreshToken, token_hmac="f1-ty", family_id="f1", generation=1, created_at=NOW)
    assert_refused_by_database(database, RefreshToken, token_hmac="f1-t1", family_id="f1", generation=7, created_at=NOW)


def test_refresh_families_are_revoked_and_purged(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    family(database, ann, "a1")
    family(database, ann, "a2")
    family(database, bob, "b1", expires=-HOUR)
    with database.transaction() as s:
        assert tokens.revoke_refresh_family(s, family_id="a1", now=NOW, reason="signed out" + "x" * 100)
        assert not tokens.revoke_refresh_family(s, family_id="a1", now=NOW, reason="again")
        assert tokens.revoke_refresh_families_of(s, principal_id=ann, now=NOW, reason="disabled") == 1
        assert tokens.revoke_refresh_families_of(s, principal_id=ann, now=NOW, reason="disabled") == 0
        tokens.add_authorization_code(s, **code("old", expires=-HOUR))
        assert tokens.add_device_authorization(s, **{**device("old", "old"), "expires_at": NOW - HOUR})
    with database.transaction() as s:
        a1, a2 = tokens.get_refresh_family(s, family_id="a1"), tokens.get_refresh_family(s, family_id="a2")
        assert a1 is not None and a2 is not None
        assert (a1.revoked_reason, a2.revoked_reason) == (("signed out" + "x" * 100)[:64], "disabled")
        # The ended family (with its token), the expired code and the expired device authorization.
        assert tokens.purge_cli_sign_ins(s, now=NOW) == 4
    with database.transaction() as s:
        assert tokens.get_refresh_family(s, family_id="b1") is None
        assert tokens.get_refresh_token(s, token_hmac="b1-t0") is None
        assert tokens.get_refresh_family(s, family_id="a1") is not None
