"""The people the broker has seen: one row per (identity store, subject), found, upserted and disabled here.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import NamedTuple, cast

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.identity import Identity
from broker.store.models import (
    Principal,
    PrincipalNetwork,
)


def upsert_principal(session: Session, *, identity: Identity, now: datetime) -> Principal:
    principal = session.scalars(
        select(Principal).where(Principal.store == identity.store, Principal.subject == identity.subject)
    ).one_or_none()
    if principal is None:
        principal = Principal(
            store=identity.store,
            subject=identity.subject,
            issuer=identity.issuer,
            username=identity.username,
            email=identity.email,
            groups=sorted(identity.groups),
            first_seen_at=now,
            last_seen_at=now,
        )
        session.add(principal)
        session.flush()
    else:
        principal.username = identity.username
        principal.email = identity.email
        principal.groups = sorted(identity.groups)
        principal.last_seen_at = now
    return principal


class PrincipalRef(NamedTuple):
    id: int
    disabled: bool


def touch_principal(session: Session, *, identity: Identity, now: datetime) -> PrincipalRef:
    """:func:`upsert_principal` as one statement, for the sign-in and issuance hot paths.

    ``INSERT ... ON CONFLICT (store, subject) DO UPDATE ... RETURNING id`` (PostgreSQL and SQLite 3.35+): one
    round trip and no unit of work, where loading the row and flushing its changes takes two of each.
    """
    table = cast(Table, Principal.__table__)
    dialect_insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = dialect_insert(table).values(
        store=identity.store,
        subject=identity.subject,
        issuer=identity.issuer,
        username=identity.username,
        email=identity.email,
        groups=sorted(identity.groups),
        first_seen_at=now,
        last_seen_at=now,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.store, table.c.subject],
        set_={
            "username": statement.excluded.username,
            "email": statement.excluded.email,
            "groups": statement.excluded.groups,
            "last_seen_at": statement.excluded.last_seen_at,
        },
    )
    found = session.execute(statement.returning(table.c.id, table.c.disabled)).one()
    return PrincipalRef(found.id, bool(found.disabled))


def principal_disabled(session: Session, *, store: str, subject: str) -> bool:
    """True when an administrator disabled this principal (no row yet means not disabled)."""
    disabled = session.scalar(select(Principal.disabled).where(Principal.store == store, Principal.subject == subject))
    return bool(disabled)


def principal_id_disabled(session: Session, *, principal_id: int) -> bool:
    """True when the principal with this row id is disabled."""
    return bool(session.scalar(select(Principal.disabled).where(Principal.id == principal_id)))


def find_principals(session: Session, *, name: str) -> Sequence[Principal]:
    """Principals whose email or username is ``name``, or the one named ``store:subject``."""
    query = select(Principal).where((Principal.email == name) | (Principal.username == name))
    if ":" in name:
        store, subject = name.split(":", 1)
        query = select(Principal).where(
            (Principal.email == name)
            | (Principal.username == name)
            | ((Principal.store == store) & (Principal.subject == subject))
        )
    return session.scalars(query.order_by(Principal.id)).all()


def get_principal(session: Session, *, principal_id: int) -> Principal | None:
    return session.get(Principal, principal_id)


def list_principals(session: Session) -> Sequence[Principal]:
    return session.scalars(select(Principal).order_by(Principal.id)).all()


def set_principal_disabled(session: Session, *, principal_id: int, disabled: bool) -> None:
    session.execute(update(Principal).where(Principal.id == principal_id).values(disabled=disabled))


def remember_network(session: Session, *, principal: str, network: str, now: datetime) -> tuple[bool, bool]:
    """Record that ``principal`` signed in from ``network``; returns (network was new, principal had others)."""
    known = session.scalars(select(PrincipalNetwork.network).where(PrincipalNetwork.principal == principal)).all()
    if network in known:
        return False, True
    try:
        with session.begin_nested():
            session.add(PrincipalNetwork(principal=principal, network=network, first_seen_at=now))
    except IntegrityError:
        return False, True  # another process recorded it first
    return True, bool(known)


def principals_of_store(
    session: Session, *, store: str, username: str | None = None, email: str | None = None, subject: str | None = None
) -> Sequence[Principal]:
    """A store's principals whose username or e-mail (case-insensitive) or subject (exact) is the one given."""

    query = select(Principal).where(Principal.store == store)
    if username is not None:
        query = query.where(func.lower(Principal.username) == username.lower())
    if email is not None:
        query = query.where(func.lower(Principal.email) == email.lower())
    if subject is not None:
        query = query.where(Principal.subject == subject)
    return session.scalars(query.order_by(Principal.id)).all()
