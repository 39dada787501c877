"""Prometheus metrics and suspicious-behaviour alerts, both derived from the audit trail.

Every audit event passes :meth:`Monitor.observe` as it is appended (``AuditTrail.observers``): the event
updates counters at once, and is queued for the alert rules, which the background worker
(:meth:`Monitor.process`) evaluates against the database, so they hold across broker processes:

* ``denial_burst`` / ``mfa_failure_burst``: ``alerts.burst_threshold`` refusals for one principal within
  ``alerts.burst_window_seconds`` (one alert per window);
* ``new_network``: a sign-in from a network (``/24``, ``/64`` by default) the person never signed in from
  before (the first sign-in ever sets the baseline and raises nothing);
* ``break_glass_used``: a break-glass sign-in or issuance;
* ``outside_allowed_hours``: an issuance attempt refused by a role's ``allowed_hours``.

An alert is an audit event (``alert``, reason = the rule) plus a webhook notification.

Metrics are per process by default (each worker's ``/metrics`` shows its own counts; scrape every worker or
sum them). With ``PROMETHEUS_MULTIPROC_DIR`` set before start-up, prometheus-client keeps the values in files
in that directory and ``/metrics`` aggregates all processes (prometheus-client "Multiprocess Mode").
"""

from __future__ import annotations

import ipaddress
import os
import queue
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

from broker.audit import AuditTrail, Clock
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.errors import BrokerError
from broker.identity import Credentials
from broker.settings import AlertSettings
from broker.store import queries
from broker.store.db import Database
from broker.store.models import AuditEvent

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Audit reasons and events that mean a second factor failed or an account was locked (their reasons are
# ``mfa.*`` / ``totp_*`` / ``*lockout*``); matched by substring so new factor types count without a change here.
_MFA_MARKERS = ("mfa", "totp", "webauthn", "otp")
_LOCKOUT_MARKERS = ("lockout", "locked")
# At most this many events wait for the alert rules; beyond it, the oldest are dropped (and counted).
QUEUE_LIMIT = 10000


class Metrics:
    """The broker's metrics, in a registry of its own (nothing global, nothing at import time)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.logins = Counter("broker_logins", "Sign-ins, by store and outcome.", ["store", "outcome"], registry=r)
        self.denials = Counter("broker_denials", "Refusals, by event and reason.", ["event", "reason"], registry=r)
        self.issuances = Counter(
            "broker_issuances", "Credentials issued, by channel and role.", ["channel", "role"], registry=r
        )
        self.sts_seconds = Histogram(
            "broker_sts_request_seconds",
            "Latency of STS AssumeRole calls.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        self.sts_errors = Counter("broker_sts_errors", "STS failures, by reason.", ["reason"], registry=r)
        self.mfa_failures = Counter("broker_mfa_failures", "Failed second factors.", registry=r)
        self.lockouts = Counter("broker_lockouts", "Accounts locked after repeated failures.", registry=r)
        self.alerts = Counter("broker_alerts", "Alerts raised, by rule.", ["rule"], registry=r)
        self.revocations = Counter(
            "broker_revocations", "Revocations, by scope and outcome.", ["scope", "outcome"], registry=r
        )
        self.dropped = Counter("broker_alert_events_dropped", "Audit events not evaluated for alerts.", registry=r)

    def render(self) -> bytes:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            aggregate = CollectorRegistry()
            multiprocess.MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
            return generate_latest(aggregate)
        return generate_latest(self.registry)

    def count(self, event: AuditEvent) -> None:
        """Update counters from one audit event (never raises)."""
        detail = event.detail or {}
        lowered = f"{event.event} {event.reason}".lower()
        if event.event == "login":
            self.logins.labels(event.store or "", event.outcome).inc()
        if event.outcome in {"denied", "failed"}:
            self.denials.labels(event.event, event.reason).inc()
            if any(marker in lowered for marker in _MFA_MARKERS):
                self.mfa_failures.inc()
        if any(marker in lowered for marker in _LOCKOUT_MARKERS):
            self.lockouts.inc()
        if event.event == "credentials" and event.outcome == "ok":
            self.issuances.labels(event.channel or "", str(detail.get("role", ""))).inc()
        if event.event == "revocation":
            self.revocations.labels(str(detail.get("scope", "")), event.outcome).inc()
        if event.event == "alert":
            self.alerts.labels(event.reason).inc()


class TimedSts(Sts):
    """The STS client, timing each AssumeRole and counting failures by reason."""

    def __init__(self, *args: Any, metrics: Metrics, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._metrics = metrics

    def assume_role(self, request: AssumeRoleRequest) -> Credentials:
        started = time.perf_counter()
        try:
            return super().assume_role(request)
        except BrokerError as exc:
            self._metrics.sts_errors.labels(exc.reason).inc()
            raise
        finally:
            self._metrics.sts_seconds.observe(time.perf_counter() - started)


@dataclass(frozen=True)
class _Seen:
    """The parts of an audit event the alert rules read (the ORM row must not cross threads)."""

    seq: int
    event: str
    outcome: str
    reason: str
    principal: str | None
    store: str | None
    client_ip: str | None
    detail: dict[str, Any]


class Monitor:
    def __init__(
        self,
        settings: AlertSettings,
        *,
        db: Database,
        audit: AuditTrail,
        metrics: Metrics,
        notify: Any,
        clock: Clock,
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.metrics = metrics
        self.notify = notify
        self.clock = clock
        self._queue: queue.Queue[_Seen] = queue.Queue(QUEUE_LIMIT)

    def observe(self, event: AuditEvent) -> None:
        """Called for every appended audit event, inside its transaction: cheap, and never raises."""
        self.metrics.count(event)
        if not self.settings.enabled or event.event == "alert":
            return
        seen = _Seen(
            event.seq,
            event.event,
            event.outcome,
            event.reason,
            event.principal,
            event.store,
            event.client_ip,
            dict(event.detail or {}),
        )
        try:
            self._queue.put_nowait(seen)
        except queue.Full:
            self.metrics.dropped.inc()

    def process(self) -> int:
        """Evaluate queued events against the alert rules; returns how many alerts were raised."""
        raised = 0
        while True:
            try:
                seen = self._queue.get_nowait()
            except queue.Empty:
                return raised
            for rule, principal, detail in self._rules(seen):
                self._raise(rule, principal, detail, seen)
                raised += 1

    def _rules(self, seen: _Seen) -> list[tuple[str, str | None, dict[str, Any]]]:
        found: list[tuple[str, str | None, dict[str, Any]]] = []
        if seen.event == "login" and seen.outcome == "ok" and seen.detail.get("break_glass"):
            found.append(("break_glass_used", seen.principal, {"store": seen.store}))
        if seen.event == "credentials" and seen.outcome == "ok" and seen.detail.get("break_glass"):
            found.append(("break_glass_used", seen.principal, {"role": seen.detail.get("role")}))
        if seen.event == "credentials" and seen.reason == "outside_allowed_hours":
            found.append(("outside_allowed_hours", seen.principal, {"role": seen.detail.get("role")}))
        if seen.event == "login" and seen.outcome == "ok" and seen.principal and seen.client_ip:
            network = self._network(seen.client_ip)
            if network is not None:
                with self.db.transaction() as session:
                    new, had_others = queries.remember_network(
                        session, principal=seen.principal, network=network, now=self.clock()
                    )
                if new and had_others:
                    found.append(("new_network", seen.principal, {"network": network, "client_ip": seen.client_ip}))
        if seen.outcome in {"denied", "failed"} and seen.principal:
            burst = self._burst(seen)
            if burst is not None:
                found.append(burst)
        return found

    def _network(self, client_ip: str) -> str | None:
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return None
        prefix = self.settings.ipv4_prefix if address.version == 4 else self.settings.ipv6_prefix
        return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))

    def _burst(self, seen: _Seen) -> tuple[str, str | None, dict[str, Any]] | None:
        assert seen.principal is not None
        mfa = any(marker in f"{seen.event} {seen.reason}".lower() for marker in _MFA_MARKERS)
        rule = "mfa_failure_burst" if mfa else "denial_burst"
        since = self.clock() - timedelta(seconds=self.settings.burst_window_seconds)
        with self.db.transaction() as session:
            count = queries.count_audit_events(session, principal=seen.principal, since=since, outcome="denied")
            count += queries.count_audit_events(session, principal=seen.principal, since=since, outcome="failed")
            if count < self.settings.burst_threshold:
                return None
            # One alert per principal per window: the audit trail itself remembers that it was raised.
            already = queries.search_audit_events(
                session, event="alert", principal=seen.principal, since=since, limit=50
            )
            if any(a.reason in {"denial_burst", "mfa_failure_burst"} for a in already):
                return None
        return (
            rule,
            seen.principal,
            {"count": count, "window_seconds": self.settings.burst_window_seconds, "last_reason": seen.reason},
        )

    def _raise(self, rule: str, principal: str | None, detail: dict[str, Any], seen: _Seen) -> None:
        full = {**detail, "trigger_seq": seen.seq, "trigger_event": seen.event, "trigger_reason": seen.reason}
        try:
            with self.db.transaction() as session:
                self.audit.append(
                    session,
                    event="alert",
                    outcome="raised",
                    reason=rule,
                    principal=principal,
                    store=seen.store,
                    detail=full,
                )
                self.notify(
                    session,
                    f"alert.{rule}",
                    f":rotating_light: {rule.replace('_', ' ')}: {principal or 'unknown principal'} "
                    + ", ".join(f"{k}={v}" for k, v in detail.items() if v is not None),
                    full,
                )
        except BrokerError:
            return  # database unavailable: the triggering event itself is on record
