"""An audit trail that is down while the rest of the database is up: a trigger refuses every audit insert."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text

from broker.store.db import Database


@contextmanager
def audit_refused(database: Database, db_url: str) -> Iterator[None]:
    """A trigger refuses every audit insert: the audit trail is down, the rest of the database is not."""
    with database.engine.begin() as conn:
        if db_url.startswith("sqlite"):
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events "
                    "BEGIN SELECT RAISE(ABORT, 'audit down'); END"
                )
            )
        else:
            conn.execute(
                text(
                    "CREATE OR REPLACE FUNCTION refuse_audit() RETURNS trigger AS $$ BEGIN "
                    "RAISE EXCEPTION 'audit down'; END $$ LANGUAGE plpgsql"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events FOR EACH ROW "
                    "EXECUTE FUNCTION refuse_audit()"
                )
            )
    try:
        yield
    finally:
        with database.engine.begin() as conn:
            conn.execute(
                text("DROP TRIGGER refuse_audit" + ("" if db_url.startswith("sqlite") else " ON audit_events"))
            )
