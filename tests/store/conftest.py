"""Rows the storage conformance tests share: a fixed instant, an identity, a principal to hang rows on."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError

from broker.errors import ServiceUnavailable
from broker.identity import Identity
from broker.store import principals
from broker.store.db import Database
from broker.store.models import Base

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def identity(
    subject: str = "u1",
    *,
    store: str = "corp",
    username: str = "ann",
    email: str | None = None,
    groups: frozenset[str] = frozenset(),
) -> Identity:
    return Identity(
        subject=subject, issuer="https://idp.test", store=store, username=username, email=email, groups=groups
    )


@pytest.fixture
def add_principal(database: Database) -> Callable[..., int]:
    """Insert a principal (committed) and return its row id."""

    def add(subject: str = "u1", *, store: str = "corp", username: str = "ann", email: str | None = None) -> int:
        with database.transaction() as s:
            return principals.upsert_principal(
                s, identity=identity(subject, store=store, username=username, email=email), now=NOW
            ).id

    return add


def assert_refused_by_database(database: Database, model: type[Base], **row: object) -> None:
    """A plain INSERT of ``row``, past every store function, fails on a constraint of the database itself."""
    with pytest.raises(ServiceUnavailable) as info, database.transaction() as s:
        s.execute(insert(model).values(**row))
    assert info.value.reason == "database_unavailable"
    assert isinstance(info.value.__cause__, IntegrityError)
