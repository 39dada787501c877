"""Readiness during a rolling upgrade: a schema newer than the code is served; an older one is not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from broker.store.db import Database
from broker.store.migrations import is_ready


@pytest.fixture(autouse=True)
def restore_version(database: Database) -> Iterator[None]:
    """The PostgreSQL test database is shared by the session: put its revision rows back."""
    with database.engine.begin() as conn:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    yield
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        for row in rows:
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": row})


def test_ready_at_head(database: Database) -> None:
    assert is_ready(database) == (True, "ok")


def test_newer_schema_keeps_the_old_release_ready(database: Database) -> None:
    # The migration Job of the next release ran first: this code does not know the revision.
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('9999_next_release')"))
    ready, detail = is_ready(database)
    assert ready and "newer" in detail


def test_older_schema_is_not_ready(database: Database) -> None:
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM alembic_version"))
        conn.execute(text("INSERT INTO alembic_version (version_num) VALUES ('0001')"))
    ready, detail = is_ready(database)
    assert not ready and "broker db upgrade" in detail
