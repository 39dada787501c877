"""Reading what a running broker wrote: audit events and issuances, straight from its database."""

from __future__ import annotations

from sqlalchemy import select

from broker.store import queries
from broker.store.db import Database
from broker.store.models import AuditEvent, Issuance


class Records:
    """Mixin for test harnesses that know their broker's ``db_url``."""

    db_url: str

    def audit(self, after: int = 0) -> list[AuditEvent]:
        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                rows = [r for r in queries.iter_audit_events(session) if r.seq > after]
                session.expunge_all()
                return rows
        finally:
            db.dispose()

    def last_seq(self) -> int:
        rows = self.audit()
        return rows[-1].seq if rows else 0

    def issuances(self) -> list[Issuance]:
        db = Database(self.db_url)
        try:
            with db.transaction() as session:
                rows = list(session.scalars(select(Issuance).order_by(Issuance.id)).all())
                session.expunge_all()
                return rows
        finally:
            db.dispose()
