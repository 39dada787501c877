"""broker.store.deliveries on SQLite and PostgreSQL: the webhook queue, leased and settled."""

from __future__ import annotations

from datetime import timedelta

from broker.store import deliveries
from broker.store.db import Database
from tests.store.conftest import NOW

MINUTE = timedelta(minutes=1)


def test_enqueue_lease_deliver_and_fail(database: Database) -> None:
    with database.transaction() as s:
        first = deliveries.enqueue_delivery(s, kind="a", payload={"text": "1"}, now=NOW).id
        second = deliveries.enqueue_delivery(s, kind="b", payload={"text": "2"}, now=NOW + MINUTE).id
    with database.transaction() as s:
        assert [d.id for d in deliveries.due_deliveries(s, now=NOW)] == [first]
        due = deliveries.due_deliveries(s, now=NOW + MINUTE, limit=5)
        assert [d.id for d in due] == [first, second]
        for row in due:
            deliveries.lease_delivery(s, row=row, until=NOW + 10 * MINUTE)
    with database.transaction() as s:
        assert deliveries.due_deliveries(s, now=NOW + 5 * MINUTE) == []
        one, two = deliveries.get_delivery(s, delivery_id=first), deliveries.get_delivery(s, delivery_id=second)
        assert one is not None and two is not None and (one.attempts, two.attempts) == (1, 1)
        deliveries.mark_delivered(s, row=one, now=NOW + 2 * MINUTE)
        deliveries.record_delivery_failure(s, row=two, error="502", retry_at=NOW + 20 * MINUTE)
    with database.transaction() as s:
        assert [d.id for d in deliveries.list_deliveries(s, status="delivered")] == [first]
        assert [d.id for d in deliveries.due_deliveries(s, now=NOW + 20 * MINUTE)] == [second]
        two = deliveries.get_delivery(s, delivery_id=second)
        assert two is not None and (two.status, two.last_error) == ("pending", "502")
        deliveries.record_delivery_failure(s, row=two, error="timeout", retry_at=None)
    with database.transaction() as s:
        assert [(d.id, d.status, d.last_error) for d in deliveries.list_deliveries(s)] == [
            (second, "failed", "timeout"),
            (first, "delivered", None),
        ]
        assert deliveries.due_deliveries(s, now=NOW + 60 * MINUTE) == []
        assert deliveries.get_delivery(s, delivery_id=second + 1000) is None
        assert len(deliveries.list_deliveries(s, limit=1)) == 1
