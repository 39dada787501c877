"""Brute-force defence for second factors: consecutive failures lock, each lockout longer than the last.

Counters live in the database (``mfa_lockouts``), one per principal and one per client address, so a lockout
holds across every broker process. These functions are the rules; the service applies them to row-locked
counters inside a transaction. During a lockout the code is not even checked: the correct code is refused
too, so guessing during a lockout learns nothing (NIST SP 800-63B section 5.2.2).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


class Counter(Protocol):
    failures: int
    lockouts: int
    last_failure_at: datetime | None
    locked_until: datetime | None


@dataclass(frozen=True)
class LockoutRule:
    max_failures: int
    window: timedelta
    base: timedelta
    cap: timedelta


def locked_until(counter: Counter, now: datetime) -> datetime | None:
    """The end of a lockout in force at ``now``, if any."""
    return counter.locked_until if counter.locked_until is not None and counter.locked_until > now else None


def expire(counter: Counter, now: datetime) -> bool:
    """Lift a lockout whose time is over; True if one was lifted (the caller audits the unlock)."""
    if counter.locked_until is not None and counter.locked_until <= now:
        counter.locked_until = None
        return True
    return False


def fail(counter: Counter, rule: LockoutRule, now: datetime) -> datetime | None:
    """Count one failure; return the end of the lockout it starts, if it starts one.

    Failures older than the window are forgotten. The n-th lockout lasts ``base * 2**(n-1)``, capped, so a
    patient attacker gets a handful of guesses an hour instead of thousands.
    """
    if counter.last_failure_at is None or now - counter.last_failure_at > rule.window:
        counter.failures = 0
    counter.failures += 1
    counter.last_failure_at = now
    if counter.failures < rule.max_failures:
        return None
    duration = min(rule.base * (2 ** min(counter.lockouts, 20)), rule.cap)
    counter.lockouts += 1
    counter.failures = 0
    counter.locked_until = now + duration
    return counter.locked_until


def succeed(counter: Counter) -> None:
    """A correct factor for this principal ends its backoff (address counters are not reset by it)."""
    counter.failures = 0
    counter.lockouts = 0
    counter.last_failure_at = None
