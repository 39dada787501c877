"""Webhook notifications (Slack-compatible JSON) through a database outbox.

:meth:`Notifier.enqueue` adds a row to ``webhook_deliveries`` inside the caller's transaction, so a
notification exists exactly when the action it reports committed, and nothing is lost if the process dies.
:meth:`Notifier.deliver_due` (run by the background worker, ``broker.worker``) sends due rows with a short
timeout, retries with exponential backoff, and after ``max_attempts`` marks the row failed and audits
``webhook.failed``. A request never waits for a webhook.

The body is Slack's incoming-webhook format: ``{"text": "..."}``, plus ``"event"`` and ``"detail"`` keys that
Slack ignores and other receivers (Teams workflows, PagerDuty via a relay, a SIEM) can use.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from broker.audit import AuditTrail
from broker.context import Clock
from broker.http import HttpClient, HttpPolicy, UpstreamTooLarge, UpstreamUnavailable
from broker.settings import NotificationSettings
from broker.store import deliveries, queries
from broker.store.db import Database

if TYPE_CHECKING:
    from broker.store.db import Session

# Receivers answer within the timeout or the attempt counts as failed; responses are never read beyond this.
MAX_ERROR_CHARS = 300
# A webhook's answer is read only for its status; a receiver that sends more than this is cut off.
MAX_RESPONSE_BYTES = 64 * 1024


class Notifier:
    def __init__(self, settings: NotificationSettings, *, db: Database, audit: AuditTrail, clock: Clock) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return self.settings.webhook_url is not None

    def enqueue(self, session: Session, kind: str, text: str, detail: dict[str, Any] | None = None) -> None:
        """Queue one notification inside the caller's transaction (no-op when no webhook is configured)."""
        if not self.enabled:
            return
        payload = {"text": text, "event": kind, "detail": detail or {}}
        queries.enqueue_delivery(session, kind=kind, payload=payload, now=self.clock())

    def deliver_due(self, *, limit: int = 20) -> int:
        """Send every due delivery once; returns how many were sent successfully.

        Rows are claimed in one short transaction (a lease pushes ``next_attempt_at`` out, so another process
        skips them), posted with no transaction open (a slow receiver must not hold a database lock), and the
        outcomes recorded in a second transaction.
        """
        url = self.settings.webhook_url
        if url is None:
            return 0
        now = self.clock()
        lease = timedelta(seconds=self.settings.timeout_seconds * 2 + 30)
        with self.db.transaction() as session:
            claimed = []
            for row in queries.due_deliveries(session, now=now, limit=limit):
                deliveries.lease_delivery(session, row=row, until=now + lease)
                claimed.append((row.id, row.kind, row.attempts, dict(row.payload)))
        if not claimed:
            return 0
        timeout = self.settings.timeout_seconds
        policy = HttpPolicy(
            connect_seconds=timeout, read_seconds=timeout, max_bytes=MAX_RESPONSE_BYTES, trust_env=True, peer="webhook"
        )
        with HttpClient(policy) as client:
            outcomes = [(item, self._post(client, url.get_secret_value(), item[3])) for item in claimed]
        sent = 0
        with self.db.transaction() as session:
            for (delivery_id, kind, attempts, _), error in outcomes:
                delivery = queries.get_delivery(session, delivery_id=delivery_id)
                if delivery is None:
                    continue
                if error is None:
                    deliveries.mark_delivered(session, row=delivery, now=self.clock())
                    sent += 1
                    continue
                if attempts >= self.settings.max_attempts:
                    deliveries.record_delivery_failure(session, row=delivery, error=error, retry_at=None)
                    # Audited with the status change: a notification that never arrived is on record.
                    self.audit.append(
                        session,
                        event="webhook.failed",
                        outcome="failed",
                        reason="webhook_delivery_failed",
                        detail={"delivery_id": delivery_id, "kind": kind, "attempts": attempts, "error": error},
                    )
                else:
                    backoff = self.settings.retry_base_seconds * 2 ** (attempts - 1)
                    retry_at = self.clock() + timedelta(seconds=backoff)
                    deliveries.record_delivery_failure(session, row=delivery, error=error, retry_at=retry_at)
        return sent

    @staticmethod
    def _post(client: HttpClient, url: str, payload: dict[str, Any]) -> str | None:
        try:
            response = client.post_json(url, payload)
        except UpstreamUnavailable as exc:
            # The URL is a credential (Slack): name the failure, never the URL.
            return exc.failure[:MAX_ERROR_CHARS]
        except UpstreamTooLarge:
            return "response too large"
        if 200 <= response.status < 300:
            return None
        return f"HTTP {response.status}"
