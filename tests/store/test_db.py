"""The transaction scope on SQLite and PostgreSQL: one transaction per thread, and work queued after it."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
from sqlalchemy import text

from broker.errors import AuditUnavailable, InvalidRequest
from broker.store.db import Database


def test_a_second_transaction_in_the_same_thread_is_refused(database: Database) -> None:
    """On SQLite it would wait for the first one's write lock until busy_timeout: refused at once instead."""
    with database.transaction(), pytest.raises(RuntimeError, match="already open"), database.transaction():
        pass
    assert not database.in_transaction()
    with database.transaction() as s:
        assert s.execute(text("SELECT 1")).scalar() == 1


@pytest.mark.parametrize("fails", [False, True])
def test_queued_work_runs_once_the_transaction_has_ended(database: Database, fails: bool) -> None:
    seen: list[bool] = []
    with pytest.raises(InvalidRequest) if fails else nullcontext(), database.transaction():
        database.after_transaction(lambda: seen.append(database.in_transaction()))
        assert seen == []
        if fails:
            raise InvalidRequest()
    assert seen == [False]


def test_queued_work_that_fails_replaces_the_error_in_flight(database: Database) -> None:
    """Fail closed: a refusal whose audit write fails is answered as the audit outage it is."""

    def audit_down() -> None:
        raise AuditUnavailable()

    with pytest.raises(AuditUnavailable) as raised, database.transaction():
        database.after_transaction(audit_down)
        raise InvalidRequest()
    assert isinstance(raised.value.__context__, InvalidRequest)


def test_without_a_transaction_queued_work_runs_now(database: Database) -> None:
    seen: list[int] = []
    database.after_transaction(lambda: seen.append(1))
    assert seen == [1]
