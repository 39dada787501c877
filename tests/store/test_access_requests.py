"""broker.store.access_requests on SQLite and PostgreSQL: requests, their windows, and revocation records."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from broker.store import access_requests as requests
from broker.store.db import Database
from tests.store.conftest import NOW

HOUR = timedelta(hours=1)


def request(database: Database, pid: int, *, role: str = "admin", status: str = "pending", **extra: Any) -> int:
    fields = {
        "principal_id": pid, "principal": "ann", "role_name": role, "reason": "INC-1", "duration_seconds": 3600,
        "status": status, "created_at": NOW, "expires_at": NOW + HOUR, **extra,
    }  # fmt: skip
    with database.transaction() as s:
        return requests.create_access_request(s, **fields).id


def test_approve_decide_and_end(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    first = request(database, pid)
    with database.transaction() as s:
        row = requests.get_access_request(s, request_id=first, lock=True)
        assert row is not None and row.status == "pending"
        requests.approve_request(s, row=row, now=NOW)
        requests.record_decision(s, row=row, by="boss", now=NOW, note="ok")
    with database.transaction() as s:
        row = requests.get_access_request(s, request_id=first)
        assert row is not None
        assert (row.status, row.grant_starts_at, row.grant_ends_at) == ("approved", NOW, NOW + HOUR)
        assert (row.decided_by, row.decided_at, row.decision_note) == ("boss", NOW, "ok")
        assert [g.id for g in requests.open_grants(s, principal_id=pid, now=NOW + HOUR / 2)] == [first]
        assert requests.open_grants(s, principal_id=pid, now=NOW + HOUR) == []
        assert [g.id for g in requests.open_grants_for(s, store="corp", subject="u1", now=NOW)] == [first]
        assert requests.open_grants_for(s, store="corp", subject="nobody", now=NOW) == []
        requests.end_grant(s, row=row, now=NOW + HOUR / 4, cut_short=True)
    with database.transaction() as s:
        row = requests.get_access_request(s, request_id=first)
        cut = NOW + HOUR / 4
        assert row is not None and (row.status, row.ended_at, row.grant_ends_at) == ("ended", cut, cut)
        assert requests.get_access_request(s, request_id=first + 1000) is None


def test_list_close_and_the_clock(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    pending = request(database, ann)
    denied = request(database, ann, role="readonly")
    window = request(database, bob, status="approved", grant_starts_at=NOW, grant_ends_at=NOW + HOUR)
    with database.transaction() as s:
        row = requests.get_access_request(s, request_id=denied)
        assert row is not None
        requests.close_request(s, row=row, status="denied")
    with database.transaction() as s:
        assert [r.id for r in requests.list_access_requests(s)] == [window, denied, pending]
        assert [r.id for r in requests.list_access_requests(s, status="pending")] == [pending]
        assert [r.id for r in requests.list_access_requests(s, principal_id=ann, role_name="readonly")] == [denied]
        assert [r.id for r in requests.list_access_requests(s, limit=1)] == [window]
        assert requests.due_requests(s, now=NOW) == []
        assert [r.id for r in requests.due_requests(s, now=NOW + HOUR)] == [pending]
        assert requests.due_grants(s, now=NOW) == []
        [ended] = requests.due_grants(s, now=NOW + HOUR)
        assert ended.id == window
        requests.end_grant(s, row=ended, now=NOW + HOUR)
    with database.transaction() as s:
        row = requests.get_access_request(s, request_id=window)
        assert row is not None and (row.status, row.ended_at, row.grant_ends_at) == ("ended", NOW + HOUR, NOW + HOUR)
        assert requests.due_grants(s, now=NOW + 2 * HOUR) == []


def test_end_access_requests_of_a_principal(database: Database, add_principal: Callable[..., int]) -> None:
    ann, bob = add_principal("u1"), add_principal("u2")
    pending = request(database, ann)
    granted = request(database, ann, status="approved", grant_starts_at=NOW, grant_ends_at=NOW + HOUR)
    other = request(database, bob)
    with database.transaction() as s:
        assert requests.end_access_requests_of(s, principal_id=ann, now=NOW) == 2
    with database.transaction() as s:
        statuses = {r.id: (r.status, r.decision_note) for r in requests.list_access_requests(s)}
        assert statuses == {
            pending: ("cancelled", "deprovisioned"),
            granted: ("revoked", None),
            other: ("pending", None),
        }
        assert requests.end_access_requests_of(s, principal_id=ann, now=NOW) == 0


def test_revocation_records(database: Database, add_principal: Callable[..., int]) -> None:
    pid = add_principal()
    with database.transaction() as s:
        for reason in ("first", "second"):
            requests.record_revocation(
                s, scope="principal", principal_id=pid, revoked_before=NOW, actor="boss", reason=reason,
                created_at=NOW, aws_applied=[], aws_failed=[],
            )  # fmt: skip
    with database.transaction() as s:
        assert [r.reason for r in requests.list_revocations(s)] == ["second", "first"]
        assert [r.reason for r in requests.list_revocations(s, limit=1)] == ["second"]
