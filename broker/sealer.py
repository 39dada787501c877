"""The background thread in every broker process that seals the audit trail and publishes its digests.

Every ``audit.seal_interval_seconds`` each process tries to seal (``AuditTrail.seal``); one at a time wins the
fleet-wide lock and the others return at once, so adding replicas adds no sealing work. When anchors are
configured the same pass signs and publishes a digest every ``audit.anchor.interval_seconds``
(``broker.anchors``). A failing pass is logged and retried: appends never wait for the sealer, and `broker audit
verify` reports events left unsealed beyond the window.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from broker.anchors import Anchors
from broker.audit import AuditTrail
from broker.errors import BrokerError
from broker.logs import get_logger
from broker.settings import AuditSettings
from broker.store.db import Database

log = get_logger("broker.sealer")


class Sealer:
    def __init__(self, trail: AuditTrail, db: Database, config: AuditSettings, anchors: Anchors | None = None) -> None:
        self.trail = trail
        self.db = db
        self.config = config
        self.anchors = anchors
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Called after every pass that completed (metrics: a sealer that stopped passing is alerted on).
        self.on_pass: list[Callable[[], None]] = []

    def run_once(self) -> int:
        """One pass: seal what is committed, then sign and publish a digest if one is due."""
        sealed = self.trail.seal(self.db, batch=self.config.seal_batch)
        if self.anchors is not None:
            self.anchors.publish_due(self.db)
        return sealed

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="broker-audit-sealer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop and seal once more, so a clean shutdown leaves nothing of its own unsealed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._pass()

    def _pass(self) -> None:
        try:
            self.run_once()
            for hook in self.on_pass:
                hook()
        except BrokerError as exc:
            log.warning("audit sealer pass failed", error=exc.code, reason=exc.reason, detail=exc.message)
        except Exception as exc:  # keep the sealer alive; the next pass retries
            log.warning("audit sealer pass failed", error=type(exc).__name__)

    def _loop(self) -> None:
        while not self._stop.wait(self.config.seal_interval_seconds):
            self._pass()


def build_sealer(trail: AuditTrail, db: Database, config: AuditSettings) -> Sealer:
    anchors = Anchors(config.anchor, clock=trail.clock) if config.anchor.enabled else None
    return Sealer(trail, db, config, anchors)
