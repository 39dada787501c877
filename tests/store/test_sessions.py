"""broker.store.sessions on SQLite and PostgreSQL: broker sessions, sign-ins in flight, SAML sessions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from broker.identity import Identity
from broker.store import sessions
from broker.store.db import Database
from broker.store.models import BrokerSession, LoginRequest, SamlSession
from tests.store.conftest import NOW, assert_refused_by_database, identity

HOUR = timedelta(hours=1)


def _session(database: Database, pid: int, id_hmac: str, *, at: int = 0, who: Identity | None = None) -> None:
    with database.transaction() as s:
        sessions.create_session(
            s,
            id_hmac=id_hmac,
            principal_id=pid,
            identity=who or identity(),
            now=NOW + timedelta(minutes=at),
            expires_at=NOW + HOUR,
            client_ip="192.0.2.1",
            user_agent="ua",
        )


def test_session_lifecycle(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    _session(database, pid, "h1")
    with database.transaction() as s:
        row = sessions.get_session(s, id_hmac="h1")
        assert row is not None
        assert (row.principal_id, row.created_at, row.last_seen_at, row.client_ip) == (pid, NOW, NOW, "192.0.2.1")
        assert Identity.from_json(row.identity) == identity()
        assert sessions.get_session(s, id_hmac="nope") is None
        sessions.touch_session(s, id_hmac="h1", now=NOW + HOUR / 2)
        sessions.update_session_identity(s, id_hmac="h1", identity=identity(username="anne"))
    with database.transaction() as s:
        row = sessions.get_session(s, id_hmac="h1")
        assert row is not None and row.last_seen_at == NOW + HOUR / 2
        assert Identity.from_json(row.identity).username == "anne"
        sessions.delete_session(s, id_hmac="h1")
    with database.transaction() as s:
        assert sessions.get_session(s, id_hmac="h1") is None


def test_session_ids_are_unique_in_the_database(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    _session(database, pid, "h1")
    assert_refused_by_database(
        database, BrokerSession, id_hmac="h1", principal_id=pid, identity={}, created_at=NOW, last_seen_at=NOW,
        expires_at=NOW,
    )  # fmt: skip


def test_list_and_revoke_sessions(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    _session(database, ann, "a1", at=0)
    _session(database, ann, "a2", at=1)
    _session(database, bob, "b1", at=2)
    with database.transaction() as s:
        assert [r.id_hmac for r in sessions.list_sessions(s)] == ["b1", "a2", "a1"]
        assert [r.id_hmac for r in sessions.list_sessions(s, principal_id=ann, limit=1)] == ["a2"]
        assert sessions.list_sessions(s, now=NOW + 2 * HOUR) == []
        assert sessions.revoke_sessions(s, principal_id=ann, now=NOW) == 2
    with database.transaction() as s:
        assert sessions.revoke_sessions(s, principal_id=ann, now=NOW) == 0
        assert [r.id_hmac for r in sessions.list_sessions(s, now=NOW)] == ["b1"]


def _login(database: Database, state: str) -> None:
    with database.transaction() as s:
        sessions.save_login_request(
            s, state_hmac=state, store="corp", browser_hmac="b", data={"nonce": "n"}, now=NOW, expires_at=NOW + HOUR
        )


def test_login_request_is_read_then_taken_once(database: Database) -> None:
    _login(database, "st")
    with database.transaction() as s:
        peeked = sessions.get_login_request(s, state_hmac="st")
        assert peeked is not None and peeked.data == {"nonce": "n"}
        assert sessions.get_login_request(s, state_hmac="other") is None
    with database.transaction() as s:
        row = sessions.take_login_request(s, state_hmac="st")
        assert row is not None and (row.store, row.browser_hmac, row.data) == ("corp", "b", {"nonce": "n"})
    with database.transaction() as s:
        assert sessions.take_login_request(s, state_hmac="st") is None
        assert sessions.get_login_request(s, state_hmac="st") is None


def test_login_state_is_unique_in_the_database(database: Database) -> None:
    _login(database, "st")
    assert_refused_by_database(
        database, LoginRequest, state_hmac="st", store="x", browser_hmac="b", data={}, created_at=NOW, expires_at=NOW
    )


def _saml(database: Database, session_hmac: str, *, name_id: str = "n1", index: str = "i1") -> None:
    with database.transaction() as s:
        sessions.save_saml_session(
            s,
            session_hmac=session_hmac,
            store="saml",
            name_id_hmac=name_id,
            logout={"session_index": index},
            now=NOW,
            expires_at=NOW + HOUR,
        )


def test_saml_session_is_taken_once(database: Database, add_principal: Callable[..., int]) -> None:
    _saml(database, "s1")
    assert_refused_by_database(
        database, SamlSession, session_hmac="s1", store="saml", name_id_hmac="n", logout={}, created_at=NOW,
        expires_at=NOW,
    )  # fmt: skip
    with database.transaction() as s:
        row = sessions.take_saml_session(s, session_hmac="s1")
        assert row is not None and row.logout == {"session_index": "i1"}
    with database.transaction() as s:
        assert sessions.take_saml_session(s, session_hmac="s1") is None


def test_end_saml_sessions_by_name_id_and_session_index(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    for name, index in (("s1", "i1"), ("s2", "i2"), ("s3", "i3")):
        _session(database, pid, name, who=identity(username=name))
        _saml(database, name, name_id="other" if name == "s3" else "n1", index=index)
    with database.transaction() as s:
        assert sessions.end_saml_sessions(s, store="saml", name_id_hmac="n1", session_indexes=["nope"]) == []
        ended = sessions.end_saml_sessions(s, store="saml", name_id_hmac="n1", session_indexes=["i2"])
        assert [e["username"] for e in ended] == ["s2"]
    with database.transaction() as s:
        assert sessions.get_session(s, id_hmac="s2") is None
        ended = sessions.end_saml_sessions(s, store="saml", name_id_hmac="n1", session_indexes=[])
        assert [e["username"] for e in ended] == ["s1"]
        assert sessions.end_saml_sessions(s, store="other", name_id_hmac="other", session_indexes=[]) == []
    with database.transaction() as s:
        assert [r.id_hmac for r in sessions.list_sessions(s)] == ["s3"]
        assert sessions.take_saml_session(s, session_hmac="s3") is not None
