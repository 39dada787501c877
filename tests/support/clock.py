"""The one test clock: real time plus an offset a test moves forward (lockouts, freshness, TOTP steps, expiry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class MovableClock:
    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float = 0, **kwargs: float) -> None:
        """Move forward by ``seconds`` and any ``timedelta`` keywords (``minutes=5``)."""
        self.offset += timedelta(seconds=seconds, **kwargs)
