"""Who is asking and when: the request context an edge hands every use case for audit, and the clock.

Both are plain values shared by every layer (web and CLI edges, use cases, the audit trail), so they live
apart from any of them: a route builds a :class:`Context` without importing the audit module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

# Every use case takes its time from one of these: tests move it, production reads the wall clock in UTC.
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    """Who is asking and from where; passed from the edge into every use case for audit."""

    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
