"""Abuse limits: per client address and per principal, shared between processes through Redis when configured.

Two ways in, one limiter:

* routes declare ``dependencies=[rate_limited("login", per="ip")]`` (a FastAPI dependency factory);
* use cases call ``limiter.hit("login", per="principal", key=username, ctx=ctx)`` once they know who it is.

A refusal is :class:`~broker.errors.RateLimited` (429) with ``Retry-After`` (RFC 6585 section 4; RFC 9110
section 10.2.3) set to the seconds until the window lets the next attempt through.

Counters use the sliding-window-counter strategy of the `limits` package: O(1) storage per key, no burst at
window edges. ``rate_limits.storage_url`` is ``memory://`` (one process) or ``redis://...`` (every broker
process shares counters, so adding replicas does not multiply an attacker's budget). Keys are HMACs of the
address or principal, so Redis holds no user names or addresses.

**Audit flooding.** Every refusal is logged, but only the *first* refusal per (limit, key) in each window
becomes an audit event (``ratelimit`` / ``denied`` / ``rate_limited``). An attacker hammering an endpoint would
otherwise turn each rejected request into an audit append, and appends serialize on the audit chain head:
the flood would slow every legitimate issuance. One event per window still records who was throttled, on
which limit, and when; the log carries the count.

**Redis down.** The limiter falls back to in-process counters rather than failing open or refusing every
sign-in: limits still hold per process, and shared counting resumes by itself. The fallback and the recovery
are each logged, and reported to ``on_storage`` hooks (``True`` while falling back: the metrics gauge).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Depends, Request, params
from fastapi.concurrency import run_in_threadpool
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from broker.audit import AuditTrail
from broker.context import Context
from broker.errors import RateLimited
from broker.keys import Keys
from broker.logs import get_logger
from broker.settings import RateLimitSettings
from broker.store.db import Database

log = get_logger("broker.ratelimit")
Per = Literal["ip", "principal"]

# Defaults per "<name>.<per>". Per-address limits are generous (a company NAT puts many people behind one
# address); per-principal limits are tight (one person does not sign in ten times a minute). Tokens are
# machine traffic: a CI fleet can legitimately exchange many per minute.
DEFAULT_LIMITS: dict[str, str] = {
    "login.ip": "60/minute",
    "login.principal": "10/minute;50/hour",
    "acs.ip": "60/minute",
    "callback.ip": "60/minute",
    "mfa.ip": "60/minute",
    "mfa.principal": "10/minute;50/hour",
    "device.ip": "60/minute",
    "device.principal": "20/minute",
    "token.ip": "1200/minute",
    "token.principal": "600/minute",
    # Failed token requests (a wrong client secret, refresh token or code) have a budget of their own, per
    # address and per client id claimed: guessing gets a few tries a minute, successful traffic keeps the above.
    "token_failure.ip": "20/minute;200/hour",
    "token_failure.principal": "20/minute;200/hour",
    "admin.ip": "300/minute",
    "admin.principal": "300/minute",
    # SCIM provisioning: an IdP's initial sync pushes thousands of users, so the client budget is large;
    # failed bearer tokens have their own small budget per address.
    "scim.ip": "1200/minute",
    "scim.principal": "1200/minute",
    "scim_auth.ip": "20/minute",
}
# Seconds to wait before trying Redis again after it failed.
_REDIS_RETRY_SECONDS = 5.0


class RateLimiter:
    """The process's limiter. Built once by ``broker.services``; reached as ``request.app.state.ratelimiter``."""

    def __init__(self, settings: RateLimitSettings, *, keys: Keys, audit: AuditTrail, db: Database) -> None:
        self.enabled = settings.enabled
        self._keys = keys
        self._audit = audit
        self._db = db
        self._items: dict[str, list[RateLimitItem]] = {
            key: parse_many(value) for key, value in {**DEFAULT_LIMITS, **settings.limits}.items()
        }
        self._shared: Storage | None = None
        if settings.storage_url != "memory://":
            # Short socket timeouts: a hung Redis must not hang sign-in (we fall back to local counters).
            shared = storage_from_string(
                settings.storage_url, socket_timeout=0.25, socket_connect_timeout=0.25, health_check_interval=30
            )
            assert isinstance(shared, Storage)  # a redis:// URL gives the synchronous storage
            self._shared = shared
        self._local = _LocalCounters()
        self._shared_down_until = 0.0
        self._falling_back = False
        # Called with True when counting falls back to this process, False when shared counting resumes.
        self.on_storage: list[Callable[[bool], None]] = []

    def close(self) -> None:
        self._local.reset()

    def _strategy(self) -> tuple[SlidingWindowCounterRateLimiter, bool]:
        if self._shared is not None and time.monotonic() >= self._shared_down_until:
            return SlidingWindowCounterRateLimiter(self._shared), True
        return SlidingWindowCounterRateLimiter(self._local), False

    def _limits(self, name: str, per: Per) -> list[RateLimitItem]:
        items = self._items.get(f"{name}.{per}")
        if items is None:
            raise KeyError(f"no rate limit named {name}.{per}; add it to broker.ratelimit.DEFAULT_LIMITS")
        return items

    def _hit(self, item: RateLimitItem, *ids: str, spend: bool = True) -> tuple[bool, float]:
        """(allowed, seconds until the window admits another hit); ``spend=False`` only looks."""
        strategy, shared = self._strategy()
        try:
            allowed = strategy.hit(item, *ids) if spend else strategy.test(item, *ids)
            reset = strategy.get_window_stats(item, *ids).reset_time if not allowed else 0.0
        except Exception as exc:  # redis-py raises its own ConnectionError/TimeoutError family
            if not shared:
                raise
            self._shared_down_until = time.monotonic() + _REDIS_RETRY_SECONDS
            log.warning("rate limit storage unreachable; counting in this process", error_type=type(exc).__name__)
            self._storage_state(falling_back=True)
            return self._hit(item, *ids, spend=spend)
        if shared and self._falling_back:
            log.info("rate limit storage reachable again; counting shared across processes")
            self._storage_state(falling_back=False)
        return allowed, reset

    def _storage_state(self, *, falling_back: bool) -> None:
        self._falling_back = falling_back
        for hook in self.on_storage:
            hook(falling_back)

    @property
    def shared(self) -> bool:
        """Whether counters live in Redis (counting is then network I/O, kept off the event loop)."""
        return self._shared is not None

    def check(
        self,
        name: str,
        *,
        per: Per,
        key: str,
        ctx: Context | None = None,
        principal: str | None = None,
        store: str | None = None,
    ) -> None:
        """Raise the audited 429 when ``<name>.<per>`` has no budget left for ``key``; spend nothing.

        With :meth:`spend`, for budgets that only some outcomes use up (failed token requests): check before
        the work, spend after a failure.
        """
        self._enforce(self.count(name, per=per, key=key, ctx=ctx, principal=principal, store=store, spend=False))

    def spend(self, name: str, *, per: Per, key: str) -> None:
        """Use up one of ``<name>.<per>`` for ``key`` without refusing anything now."""
        if not self.enabled:
            return
        ref = self._keys.mac("ratelimit", f"{per}:{key}")[:32]
        for item in self._limits(name, per):
            self._hit(item, name, per, ref)

    def hit(
        self,
        name: str,
        *,
        per: Per,
        key: str,
        ctx: Context | None = None,
        principal: str | None = None,
        store: str | None = None,
    ) -> None:
        """Count one attempt against ``<name>.<per>`` for ``key``; raise an audited 429 when over the limit."""
        self._enforce(self.count(name, per=per, key=key, ctx=ctx, principal=principal, store=store))

    def _enforce(self, refusal: _Refusal | None) -> None:
        if refusal is not None:
            raise self.refuse(refusal)

    def count(
        self,
        name: str,
        *,
        per: Per,
        key: str,
        ctx: Context | None = None,
        principal: str | None = None,
        store: str | None = None,
        spend: bool = True,
    ) -> _Refusal | None:
        """Count one attempt (``spend=False``: only look); return the refusal to :meth:`refuse` when over the
        limit (no database I/O)."""
        if not self.enabled:
            return None
        ref = self._keys.mac("ratelimit", f"{per}:{key}")[:32]
        for item in self._limits(name, per):
            allowed, reset = self._hit(item, name, per, ref, spend=spend)
            if allowed:
                continue
            retry_after = max(1, math.ceil(reset - time.time()))
            error = RateLimited(reason=f"rate_limited.{name}.{per}", retry_after=retry_after)
            window = f"{item.amount}/{item.get_expiry()}s"
            log.info("rate limited", limit=f"{name}.{per}", window=window, retry_after=retry_after)
            # The first refusal per key and window is audited; the rest are only logged (see module docstring).
            first, _ = self._hit(_once_per(item), "audit", name, per, ref)
            audit: dict[str, Any] | None = None
            if first:
                audit = {
                    "event": "ratelimit",
                    "outcome": "denied",
                    "reason": error.reason,
                    "principal": principal if principal is not None else (key[:256] if per == "principal" else None),
                    "store": store,
                    "ctx": ctx,
                    "detail": {
                        "error": error.code,
                        "limit": f"{name}.{per}",
                        "window": window,
                        "retry_after": retry_after,
                        "note": "further refusals for this key in this window are logged, not audited",
                    },
                }
            return _Refusal(error, audit)
        return None

    def refuse(self, refusal: _Refusal) -> RateLimited:
        """Audit a refusal if it is the first of its window (a database write); return the error to raise."""
        if refusal.audit is not None:
            self._audit.record(self._db, **refusal.audit)
        return refusal.error


@dataclass(frozen=True)
class _Refusal:
    error: RateLimited
    audit: dict[str, Any] | None


class _LocalCounters(MemoryStorage):
    """``limits``' in-process storage, with its sweep of expired keys run once a second.

    The library re-arms a 10 ms timer thread on every count once the last one finished, which under steady
    traffic starts a thread per request. Counting stays exact either way (an expired key is also dropped
    when it is next read); the sweep only frees the keys of clients that went quiet.
    """

    SWEEP_SECONDS = 1.0

    def _MemoryStorage__schedule_expiry(self) -> None:  # the library's private hook, called from incr()
        if not self.timer.is_alive():
            self.timer = threading.Timer(self.SWEEP_SECONDS, self._MemoryStorage__expire_events)  # type: ignore[attr-defined]
            self.timer.daemon = True
            self.timer.start()


def _once_per(item: RateLimitItem) -> RateLimitItem:
    (once,) = parse_many(f"1 per {item.get_expiry()} seconds")
    return once


def _context(request: Request) -> Context:
    request_id = getattr(request.state, "request_id", None)
    return Context(
        client_ip=request.client.host if request.client else None,
        user_agent=request.headers.get("user-agent", "")[:512] or None,
        request_id=request_id,
    )


def rate_limited(name: str, *, per: Per = "ip") -> params.Depends:
    """A route dependency counting one attempt per request against ``<name>.<per>``.

    ``per="ip"`` keys on the client address (as uvicorn resolved it: forwarded headers count only from
    ``server.forwarded_allow_ips``). ``per="principal"`` keys on the signed-in principal of the session
    cookie, and on the address when there is no live session (the route then refuses with 401 anyway).
    """

    def count(request: Request, limiter: RateLimiter) -> _Refusal | None:
        ctx = _context(request)
        key = ctx.client_ip or "unknown"
        principal = None
        if per == "principal":
            principal = _session_principal(request)
            if principal is None:
                return limiter.count(name, per="ip", key=key, ctx=ctx)
            key = principal
        return limiter.count(name, per=per, key=key, ctx=ctx, principal=principal)

    async def dependency(request: Request) -> None:
        # In-process counters are counted right here on the event loop (no thread-pool hop per request);
        # Redis round trips, a session lookup (per principal) and the audit write of a refusal go to a thread.
        limiter: RateLimiter | None = getattr(request.app.state, "ratelimiter", None)
        if limiter is None or not limiter.enabled:
            return
        if limiter.shared or per == "principal":
            refusal = await run_in_threadpool(count, request, limiter)
        else:
            refusal = count(request, limiter)
        if refusal is not None:
            raise await run_in_threadpool(limiter.refuse, refusal)

    result: Any = Depends(dependency)
    return result  # type: ignore[no-any-return]


def _session_principal(request: Request) -> str | None:
    principal = getattr(request.state, "principal", None)
    if principal:
        return str(principal)
    broker = request.app.state.broker
    cookie = request.cookies.get(broker.settings.session.cookie_name)
    if not cookie:
        return None
    from broker.errors import LoginRequired

    try:
        found: str = broker.current_session(cookie).identity.principal
    except LoginRequired:
        return None
    return found


def limiter_of(request: Request) -> RateLimiter | None:
    """The app's limiter, for edges that key on something only the body reveals (e.g. a client id)."""
    limiter: RateLimiter | None = getattr(request.app.state, "ratelimiter", None)
    return limiter
