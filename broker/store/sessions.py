"""Broker sessions, sign-ins in flight (login requests) and the SAML sessions single logout needs.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, delete, insert, select, update
from sqlalchemy.orm import Session

from broker.identity import Identity
from broker.store.models import (
    BrokerSession,
    LoginRequest,
    SamlSession,
)


def create_session(
    session: Session,
    *,
    id_hmac: str,
    principal_id: int,
    identity: Identity,
    now: datetime,
    expires_at: datetime,
    client_ip: str | None,
    user_agent: str | None,
    key_id: str | None = None,
) -> None:
    """One Core INSERT (a sign-in's hot path): the session row, keyed by the HMAC of its id (made with root
    key ``key_id``)."""
    session.execute(
        _INSERT_SESSION,
        {
            "id_hmac": id_hmac,
            "principal_id": principal_id,
            "identity": identity.to_json(),
            "created_at": now,
            "last_seen_at": now,
            "expires_at": expires_at,
            "client_ip": client_ip,
            "user_agent": user_agent,
            "key_id": key_id,
        },
    )


_INSERT_SESSION = insert(cast(Table, BrokerSession.__table__))


def get_session(session: Session, *, id_hmac: str) -> BrokerSession | None:
    return session.get(BrokerSession, id_hmac)


def find_session(session: Session, *, id_hmacs: Sequence[str]) -> BrokerSession | None:
    """The session stored under any of these HMACs (one per listed root key, ``broker.keys``)."""
    query = select(BrokerSession).where(BrokerSession.id_hmac.in_(list(id_hmacs))).limit(1)
    return session.scalars(query).first()


def touch_session(session: Session, *, id_hmac: str, now: datetime) -> None:
    session.execute(update(BrokerSession).where(BrokerSession.id_hmac == id_hmac).values(last_seen_at=now))


def delete_session(session: Session, *, id_hmac: str) -> None:
    session.execute(delete(BrokerSession).where(BrokerSession.id_hmac == id_hmac))


def update_session_identity(session: Session, *, id_hmac: str, identity: Identity) -> None:
    session.execute(update(BrokerSession).where(BrokerSession.id_hmac == id_hmac).values(identity=identity.to_json()))


def save_login_request(
    session: Session,
    *,
    state_hmac: str,
    store: str,
    browser_hmac: str,
    data: dict[str, Any],
    now: datetime,
    expires_at: datetime,
) -> None:
    session.add(
        LoginRequest(
            state_hmac=state_hmac,
            store=store,
            browser_hmac=browser_hmac,
            data=data,
            created_at=now,
            expires_at=expires_at,
        )
    )


def take_login_request(session: Session, *, state_hmac: str) -> LoginRequest | None:
    """Fetch and delete in one statement (``DELETE ... RETURNING``), so a state value works once even across
    processes: a concurrent taker waits on the row and then finds nothing. The returned row is detached."""
    table = cast(Table, LoginRequest.__table__)
    taken = (
        session.execute(delete(table).where(table.c.state_hmac == state_hmac).returning(*table.c))
        .mappings()
        .one_or_none()
    )
    return LoginRequest(**taken) if taken is not None else None


def list_sessions(
    session: Session, *, principal_id: int | None = None, now: datetime | None = None, limit: int = 100
) -> Sequence[BrokerSession]:
    query = select(BrokerSession).order_by(BrokerSession.created_at.desc()).limit(limit)
    if principal_id is not None:
        query = query.where(BrokerSession.principal_id == principal_id)
    if now is not None:
        query = query.where(BrokerSession.expires_at > now, BrokerSession.revoked_at.is_(None))
    return session.scalars(query).all()


def revoke_sessions(session: Session, *, principal_id: int, now: datetime) -> int:
    result = session.execute(
        update(BrokerSession)
        .where(BrokerSession.principal_id == principal_id, BrokerSession.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


def get_login_request(session: Session, *, state_hmac: str) -> LoginRequest | None:
    """Read a request in flight without consuming it (an operator reset shown before it is approved)."""
    return session.get(LoginRequest, state_hmac)


def save_saml_session(
    session: Session,
    *,
    session_hmac: str,
    store: str,
    name_id_hmac: str,
    logout: dict[str, Any],
    now: datetime,
    expires_at: datetime,
) -> None:
    session.add(
        SamlSession(
            session_hmac=session_hmac,
            store=store,
            name_id_hmac=name_id_hmac,
            logout=logout,
            created_at=now,
            expires_at=expires_at,
        )
    )


def take_saml_session(session: Session, *, session_hmac: str) -> SamlSession | None:
    """Fetch and delete what a LogoutRequest for this broker session needs (it is sent once)."""
    row = session.get(SamlSession, session_hmac)
    if row is not None:
        session.delete(row)
        session.flush()
    return row


def end_saml_sessions(
    session: Session, *, store: str, name_id_hmac: str, session_indexes: Sequence[str]
) -> list[dict[str, Any]]:
    """End the broker sessions an IdP's LogoutRequest names (core 3.7.3.2): every session of that NameID
    with this store, or only those with one of the given SessionIndex values. Returns their identities."""
    rows = session.scalars(
        select(SamlSession).where(SamlSession.store == store, SamlSession.name_id_hmac == name_id_hmac)
    ).all()
    if session_indexes:
        rows = [r for r in rows if r.logout.get("session_index") in session_indexes]
    hmacs = [r.session_hmac for r in rows]
    if not hmacs:
        return []
    ended = [dict(r.identity) for r in session.scalars(select(BrokerSession).where(BrokerSession.id_hmac.in_(hmacs)))]
    session.execute(delete(BrokerSession).where(BrokerSession.id_hmac.in_(hmacs)))
    session.execute(delete(SamlSession).where(SamlSession.session_hmac.in_(hmacs)))
    return ended
