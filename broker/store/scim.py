"""SCIM 2.0 provisioning rows: users, groups and memberships, per identity store.

Keyword-only functions taking the SQLAlchemy session; callers own transactions."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from broker.store.models import (
    ScimGroup,
    ScimMembership,
    ScimUser,
)

ScimRow = ScimUser | ScimGroup


def get_scim_user(session: Session, *, store: str, user_id: str, lock: bool = False) -> ScimUser | None:
    query = select(ScimUser).where(ScimUser.store == store, ScimUser.id == user_id)
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def get_scim_group(session: Session, *, store: str, group_id: str, lock: bool = False) -> ScimGroup | None:
    query = select(ScimGroup).where(ScimGroup.store == store, ScimGroup.id == group_id)
    return session.scalars(query.with_for_update() if lock else query).one_or_none()


def find_scim_users(
    session: Session,
    *,
    store: str,
    user_name_key: str | None = None,
    external_id: str | None = None,
    email_key: str | None = None,
    ids: Sequence[str] | None = None,
) -> Sequence[ScimUser]:
    """A store's provisioned users, narrowed by any of the indexed values given, oldest first."""
    query = select(ScimUser).where(ScimUser.store == store)
    if user_name_key is not None:
        query = query.where(ScimUser.user_name_key == user_name_key)
    if external_id is not None:
        query = query.where(ScimUser.external_id == external_id)
    if email_key is not None:
        query = query.where(ScimUser.email_key == email_key)
    if ids is not None:
        query = query.where(ScimUser.id.in_(list(ids)))
    return session.scalars(query.order_by(ScimUser.created_at, ScimUser.id)).all()


def find_scim_groups(
    session: Session,
    *,
    store: str,
    display_name_key: str | None = None,
    external_id: str | None = None,
    ids: Sequence[str] | None = None,
) -> Sequence[ScimGroup]:
    query = select(ScimGroup).where(ScimGroup.store == store)
    if display_name_key is not None:
        query = query.where(ScimGroup.display_name_key == display_name_key)
    if external_id is not None:
        query = query.where(ScimGroup.external_id == external_id)
    if ids is not None:
        query = query.where(ScimGroup.id.in_(list(ids)))
    return session.scalars(query.order_by(ScimGroup.created_at, ScimGroup.id)).all()


def count_scim_rows(session: Session, *, model: type[ScimRow], store: str) -> int:

    return int(session.scalar(select(func.count()).select_from(model).where(model.store == store)) or 0)


def page_scim_rows(session: Session, *, model: type[ScimRow], store: str, offset: int, limit: int) -> Sequence[ScimRow]:
    query = select(model).where(model.store == store).order_by(model.created_at, model.id).offset(offset).limit(limit)
    rows: Sequence[ScimRow] = session.scalars(query).all()  # type: ignore[assignment]
    return rows


def add_scim_row(session: Session, *, model: type[ScimRow], **fields: Any) -> ScimRow | None:
    """Insert a user or group built from ``fields``; None when its userName or displayName is already taken in
    its store."""
    row = model(**fields)
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def save_scim_row(session: Session, *, row: ScimRow, **fields: Any) -> bool:
    """Change a user or group to ``fields`` and move it to its next version; False (and the row as stored)
    when the new userName or displayName is already taken."""
    try:
        # Changed inside the savepoint: starting one flushes pending changes, and a taken name must fail in it.
        with session.begin_nested():
            for name, value in fields.items():
                setattr(row, name, value)
            row.version += 1
            session.flush()
    except IntegrityError:
        session.refresh(row)
        return False
    return True


def delete_scim_row(session: Session, *, row: ScimRow) -> None:
    column = ScimMembership.user_id if isinstance(row, ScimUser) else ScimMembership.group_id
    session.execute(delete(ScimMembership).where(column == row.id))
    session.delete(row)
    session.flush()


def set_scim_members(session: Session, *, group_id: str, members: dict[str, str | None]) -> None:
    """Replace a group's members: user id -> display name as the client sent it."""
    session.execute(delete(ScimMembership).where(ScimMembership.group_id == group_id))
    for user_id in sorted(members):
        session.add(ScimMembership(group_id=group_id, user_id=user_id, display=members[user_id]))
    session.flush()


def scim_members(session: Session, *, group_ids: Sequence[str]) -> dict[str, list[tuple[ScimUser, str | None]]]:
    """Each group's member users (with the display name the client gave), by group id."""
    query = (
        select(ScimMembership.group_id, ScimUser, ScimMembership.display)
        .join(ScimUser, ScimUser.id == ScimMembership.user_id)
        .where(ScimMembership.group_id.in_(list(group_ids)))
        .order_by(ScimUser.user_name_key)
    )
    found: dict[str, list[tuple[ScimUser, str | None]]] = {group_id: [] for group_id in group_ids}
    for group_id, user, display in session.execute(query).all():
        found[group_id].append((user, display))
    return found


def scim_groups_of(session: Session, *, user_ids: Sequence[str]) -> dict[str, list[ScimGroup]]:
    """Each user's groups, by user id."""
    query = (
        select(ScimMembership.user_id, ScimGroup)
        .join(ScimGroup, ScimGroup.id == ScimMembership.group_id)
        .where(ScimMembership.user_id.in_(list(user_ids)))
        .order_by(ScimGroup.display_name_key)
    )
    found: dict[str, list[ScimGroup]] = {user_id: [] for user_id in user_ids}
    for user_id, group in session.execute(query).all():
        found[user_id].append(group)
    return found


def link_scim_user(session: Session, *, user_id: str, principal_id: int, now: datetime) -> None:
    session.execute(update(ScimUser).where(ScimUser.id == user_id).values(principal_id=principal_id, signed_in_at=now))


def list_scim_users(session: Session) -> Sequence[ScimUser]:
    return session.scalars(select(ScimUser).order_by(ScimUser.store, ScimUser.user_name_key)).all()
