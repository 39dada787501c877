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

Besides the audit-derived counters, the broker measures what an on-call alerts on: HTTP requests by route
template (never the raw path, which would grow a series per URL) and status, their latency, database query and
audit append latency, STS calls, the rate limiter's storage state, the expiry of its certificates, the age of
the last audit seal, and its build. ``deploy/prometheus/alerts.yml`` and ``deploy/grafana/broker.json`` use
exactly these names (``tests/test_deploy.py`` checks them against a running broker).

Metrics are per process unless ``PROMETHEUS_MULTIPROC_DIR`` is set before start-up: prometheus-client then
keeps every value in files in that directory and ``/metrics`` aggregates all processes (prometheus-client
"Multiprocess Mode"). ``broker serve`` sets it to a fresh directory per start (:func:`multiprocess_dir`), so
counters are summed over workers; gauges say how to combine workers (``multiprocess_mode``), and a worker that
ends has its live gauges removed (:func:`process_ended`).
"""

from __future__ import annotations

import contextlib
import glob
import ipaddress
import os
import platform
import queue
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from broker import certificates
from broker.audit import AuditTrail
from broker.aws.sts import AssumeRoleRequest, Sts
from broker.context import Clock
from broker.errors import BrokerError
from broker.http import observe_calls
from broker.identity import Credentials
from broker.ratelimit import RateLimiter
from broker.sealer import Sealer
from broker.settings import AlertSettings, Settings
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
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Latency buckets (seconds): HTTP requests, and the database and audit writes under them.
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
DB_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


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
        # Identity providers, key sets, CRLs, webhooks and the console endpoint (broker.http.observe_calls).
        self.upstream_seconds = Histogram(
            "broker_upstream_request_seconds",
            "Latency of outgoing calls (IdP token and discovery, key sets, CRLs, webhooks), by peer and outcome.",
            ["peer", "outcome"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10),
            registry=r,
        )
        for peer in ("oidc", "oidc_token", "workload_jwks", "key_fetch", "webhook", "aws_console"):
            self.upstream_seconds.labels(peer, "ok")  # exported from the start, so ratios and alerts see them
        for reason in ("sts_unavailable", "sts_throttled", "sts_access_denied", "sts_error"):
            self.sts_errors.labels(reason)  # exported at 0 from the start, so rate() and alerts see them
        self.mfa_failures = Counter("broker_mfa_failures", "Failed second factors.", registry=r)
        self.lockouts = Counter("broker_lockouts", "Accounts locked after repeated failures.", registry=r)
        self.alerts = Counter("broker_alerts", "Alerts raised, by rule.", ["rule"], registry=r)
        self.revocations = Counter(
            "broker_revocations", "Revocations, by scope and outcome.", ["scope", "outcome"], registry=r
        )
        self.dropped = Counter("broker_alert_events_dropped", "Audit events not evaluated for alerts.", registry=r)
        # What the on-call alerts on (deploy/prometheus/alerts.yml).
        self.http_requests = Counter(
            "broker_http_requests",
            "HTTP requests, by method, route template and status code.",
            ["method", "route", "status"],
            registry=r,
        )
        self.http_seconds = Histogram(
            "broker_http_request_duration_seconds",
            "HTTP request latency, by method and route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.db_seconds = Histogram(
            "broker_db_query_duration_seconds", "Database statement latency.", buckets=DB_BUCKETS, registry=r
        )
        self.audit_seconds = Histogram(
            "broker_audit_append_duration_seconds",
            "Latency of an audit append in its own transaction (commit included).",
            buckets=DB_BUCKETS,
            registry=r,
        )
        self.audit_failures = Counter(
            "broker_audit_append_failures", "Audit appends that could not commit (the action was refused).", registry=r
        )
        self.sealed_at = Gauge(
            "broker_audit_last_seal_pass_timestamp_seconds",
            "When a sealer pass last completed (Unix time).",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.ratelimit_fallback = Gauge(
            "broker_ratelimit_storage_fallback",
            "1 while the rate limiter counts in-process because its shared storage (Redis) is unreachable.",
            multiprocess_mode="livemax",
            registry=r,
        )
        self.expiry = Gauge(
            "broker_certificate_expiry_timestamp_seconds",
            "When a certificate the broker uses stops being valid (Unix time), by kind and name.",
            ["kind", "name"],
            multiprocess_mode="livemin",
            registry=r,
        )
        self.build = Gauge(
            "broker_build_info",
            "Always 1; the labels name the running build.",
            ["version", "python"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.build.labels(_version(), platform.python_version()).set(1)

    def render(self) -> bytes:
        if os.environ.get(MULTIPROC_ENV):
            aggregate = CollectorRegistry()
            multiprocess.MultiProcessCollector(aggregate)  # type: ignore[no-untyped-call]
            return generate_latest(aggregate)
        return generate_latest(self.registry)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"  # clients choose the method: bound its values
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(method, route).observe(seconds)

    def audit_appended(self, seconds: float, ok: bool) -> None:
        self.audit_seconds.observe(seconds)
        if not ok:
            self.audit_failures.inc()

    def seal_passed(self) -> None:
        self.sealed_at.set(time.time())

    def certificates(self, found: dict[tuple[str, str], float]) -> None:
        """Record ``{(kind, name): not-after Unix time}`` (:func:`certificate_expiries`)."""
        for (kind, name), not_after in found.items():
            self.expiry.labels(kind, name).set(not_after)

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


def _version() -> str:
    try:
        return version("identity-broker")
    except PackageNotFoundError:
        return "unknown"


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """A fresh ``PROMETHEUS_MULTIPROC_DIR`` for one ``broker serve`` (set in the environment the workers
    inherit), removed when the server ends. Values of an earlier run never leak into this one. An operator's
    own ``PROMETHEUS_MULTIPROC_DIR`` names the parent folder (a writable volume, e.g. ``/tmp``)."""
    parent = os.environ.get(MULTIPROC_ENV) or None
    path = Path(tempfile.mkdtemp(prefix="broker-metrics-", dir=parent))
    os.environ[MULTIPROC_ENV] = str(path)
    try:
        yield path
    finally:
        if parent is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = parent
        shutil.rmtree(path, ignore_errors=True)


def process_ended(pid: int | None = None) -> None:
    """Drop the live gauges of a worker that ended (``pid``, this process by default); its counters stay
    in the sums. Also sweeps workers that died without saying so (killed), so a restarted worker's
    predecessor does not keep reporting a stale state."""
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return
    multiprocess.mark_process_dead(pid if pid is not None else os.getpid(), path)  # type: ignore[no-untyped-call]
    _sweep(path)


def _sweep(path: str) -> None:
    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        other = int(name.rsplit("_", 1)[1].removesuffix(".db"))
        if not _alive(other):
            multiprocess.mark_process_dead(other, path)  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def instrument(
    metrics: Metrics,
    *,
    db: Database,
    audit: AuditTrail,
    sealer: Sealer,
    ratelimiter: RateLimiter,
    settings: Settings,
    saml_certificates: dict[str, list[str]],
) -> Callable[[], None]:
    """Attach the metrics to what they measure (one call from the composition root); returns the function
    that detaches what is process-wide (the outgoing-call observer) when the app stops."""
    if path := os.environ.get(MULTIPROC_ENV):
        _sweep(path)  # a worker that was killed left its gauges behind; this one replaces it
    db.time_statements(metrics.db_seconds.observe)
    audit.timers.append(metrics.audit_appended)
    sealer.on_pass.append(metrics.seal_passed)
    ratelimiter.on_storage.append(lambda falling_back: metrics.ratelimit_fallback.set(int(falling_back)))
    metrics.ratelimit_fallback.set(0)
    metrics.certificates(certificate_expiries(settings, saml_certificates))
    return observe_calls(lambda peer, seconds, outcome: metrics.upstream_seconds.labels(peer, outcome).observe(seconds))


def certificate_expiries(settings: Settings, saml_certificates: dict[str, list[str]]) -> dict[tuple[str, str], float]:
    """``{(kind, name): not-after Unix time}`` of every certificate the broker serves or trusts: its TLS
    certificate (``tls``), the device client CA (``device_ca``), SAML service-provider certificates
    (``saml_sp``) and the SAML identity providers' signing certificates (``saml_idp``, ``saml_certificates``:
    store name -> PEMs). The earliest of several under one name counts. Unreadable files were refused at
    start-up already and are skipped here."""
    found: dict[tuple[str, str], float] = {}

    def add(kind: str, name: str, pem: bytes) -> None:
        try:
            certs = certificates.load_pem_certificates(pem)
        except ValueError:
            return
        for cert in certs:
            not_after = certificates.not_after(cert)
            found[(kind, name)] = min(found.get((kind, name), not_after), not_after)

    def read(path: Path | None) -> bytes | None:
        try:
            return path.read_bytes() if path is not None else None
        except OSError:
            return None

    if (pem := read(settings.server.tls_cert_file)) is not None:
        add("tls", "server", pem)
    if (pem := read(settings.devices.tls_client_ca_file)) is not None:
        add("device_ca", "devices", pem)
    for store in settings.identity_stores:
        sp_certificate = getattr(store, "sp_certificate", None)
        if isinstance(sp_certificate, str):
            add("saml_sp", store.name, sp_certificate.encode())
    for name, pems in saml_certificates.items():
        for pem_text in pems:
            add("saml_idp", name, pem_text.encode())
    return found
