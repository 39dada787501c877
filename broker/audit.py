"""The audit trail: every decision is an event in SQL, hash-chained, and failing closed.

Each event stores ``prev_hash`` and its own ``hash`` = HMAC-SHA256(chain key, prev_hash || canonical JSON of
its fields). The HMAC (not a bare hash) means someone who can write to the database but does not hold the
broker's key cannot rebuild a consistent chain after an edit. A single locked head row serializes appends
across processes and catches a deleted tail. Values that identify a secret (tokens, assertions, codes) are
stored only as keyed HMACs (:meth:`AuditTrail.ref`), never in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from sqlalchemy.orm import Session

from broker.errors import AuditUnavailable, BrokerError
from broker.identity import Identity
from broker.keys import Keys
from broker.store import queries
from broker.store.db import Database
from broker.store.models import AuditEvent

GENESIS = "0" * 64
# Detail keys whose values must never be stored in clear; they are replaced by keyed HMAC references.
_SECRET_WORDS = frozenset({"secret", "password", "token", "assertion", "code", "cookie", "totp", "otp", "verifier"})

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _hashed_fields(row: AuditEvent) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "event_id": row.event_id,
        "occurred_at": row.occurred_at.astimezone(UTC).isoformat(),
        "event": row.event,
        "outcome": row.outcome,
        "reason": row.reason,
        "principal": row.principal,
        "store": row.store,
        "channel": row.channel,
        "client_ip": row.client_ip,
        "request_id": row.request_id,
        "detail": row.detail,
    }


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    bad_seq: int | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Context:
    """Who is asking and from where; passed from the edge into every use case for audit."""

    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


class AuditTrail:
    def __init__(self, keys: Keys, clock: Clock = utcnow) -> None:
        self._chain_key = keys.key("audit-chain")
        self._keys = keys
        self._clock = clock
        # Called with every appended event, inside its transaction (metrics and alerts, ``broker.monitoring``).
        # An observer must be cheap and must not raise; one that does is ignored, never the audit write.
        self.observers: list[Callable[[AuditEvent], None]] = []

    def ref(self, value: str | bytes) -> str:
        """A keyed HMAC that identifies a secret value (for correlation) without revealing it."""
        return "hmac:" + self._keys.mac("audit-ref", value)[:32]

    def _hash(self, prev_hash: str, fields: Mapping[str, Any]) -> str:
        message = (prev_hash + "\n" + canonical(fields)).encode()
        return hmac.new(self._chain_key, message, hashlib.sha256).hexdigest()

    def _clean_detail(self, detail: Mapping[str, Any]) -> dict[str, Any]:
        clean: dict[str, Any] = {}
        for key, value in detail.items():
            words = set(key.lower().split("_"))
            if value is not None and (words & _SECRET_WORDS or key == "session_id") and not key.endswith("_ref"):
                clean[f"{key}_ref"] = self.ref(str(value))
            else:
                clean[key] = value
        # Round-trip through JSON so the hashed form equals what the database returns later.
        result: dict[str, Any] = json.loads(canonical(clean))
        return result

    def append(
        self,
        session: Session,
        *,
        event: str,
        outcome: str,
        reason: str,
        identity: Identity | None = None,
        principal: str | None = None,
        store: str | None = None,
        channel: str | None = None,
        ctx: Context | None = None,
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEvent:
        """Append one event inside the caller's transaction (so it commits, or not, with the action)."""
        ctx = ctx or Context()
        head = queries.lock_chain_head(session)
        row = AuditEvent(
            seq=head.seq + 1,
            event_id=str(uuid.uuid4()),
            occurred_at=self._clock(),
            event=event,
            outcome=outcome,
            reason=reason,
            principal=principal if principal is not None else (identity.principal if identity else None),
            store=store if store is not None else (identity.store if identity else None),
            channel=channel,
            client_ip=ctx.client_ip,
            request_id=ctx.request_id,
            detail=self._clean_detail(detail or {}),
            prev_hash=head.hash,
            hash="",
        )
        row.hash = self._hash(head.hash, _hashed_fields(row))
        queries.insert_audit_event(session, head=head, event=row)
        for observer in self.observers:
            try:
                observer(row)
            except Exception:  # noqa: S112 - monitoring must never break the audit write
                continue
        return row

    def record(self, db: Database, **kwargs: Any) -> AuditEvent:
        """Append one event in its own transaction; if it cannot commit, fail closed with a 503.

        Never beside an open transaction of the same thread: on SQLite it would wait for that transaction's
        write lock until it timed out. Inside one, append to its session, or use :meth:`deny`.
        """
        if db.in_transaction():
            raise RuntimeError("audit.record inside an open transaction: use append(session, ...) or deny(...)")
        try:
            with db.transaction() as session:
                return self.append(session, **kwargs)
        except BrokerError as exc:
            raise AuditUnavailable() from exc

    def deny(self, db: Database, error: BrokerError, **kwargs: Any) -> BrokerError:
        """Audit a refusal with the error's reason code and return the error for the caller to raise.

        Raised inside an open transaction, the refusal is recorded once that transaction has rolled back
        (``Database.after_transaction``): never beside it, and never undone by its rollback.
        """
        detail = dict(kwargs.pop("detail", None) or {})
        detail.setdefault("error", error.code)
        db.after_transaction(lambda: self.record(db, outcome="denied", reason=error.reason, detail=detail, **kwargs))
        return error

    def verify(self, rows: Iterable[AuditEvent], head_seq: int | None, head_hash: str | None) -> VerifyResult:
        """Walk the chain in order; name the first event that was edited, removed, reordered or inserted."""
        prev_hash, expected_seq, checked = GENESIS, 1, 0
        for row in rows:
            if row.seq != expected_seq:
                return VerifyResult(
                    False,
                    checked,
                    row.seq,
                    f"event {expected_seq} is missing (found {row.seq} next): deleted or reordered",
                )
            if row.prev_hash != prev_hash:
                return VerifyResult(
                    False,
                    checked,
                    row.seq,
                    "prev_hash does not match the previous event: inserted, deleted or reordered",
                )
            if not hmac.compare_digest(self._hash(prev_hash, _hashed_fields(row)), row.hash):
                return VerifyResult(False, checked, row.seq, "contents do not match the hash: edited")
            prev_hash, expected_seq, checked = row.hash, expected_seq + 1, checked + 1
        if head_seq is not None and (head_seq != checked or head_hash != prev_hash):
            return VerifyResult(
                False,
                checked,
                checked + 1 if head_seq > checked else head_seq,
                f"the chain head names event {head_seq} but the chain ends at {checked}: "
                "events were deleted from the end",
            )
        return VerifyResult(True, checked)

    def verify_store(self, session: Session) -> VerifyResult:
        head = queries.get_chain_head(session)
        return self.verify(queries.iter_audit_events(session), head.seq if head else None, head.hash if head else None)


def export_jsonl(session: Session, out: IO[str]) -> int:
    """Write every event as one JSON object per line, in chain order; returns the count."""
    count = 0
    for row in queries.iter_audit_events(session):
        fields = _hashed_fields(row)
        fields.update(prev_hash=row.prev_hash, hash=row.hash)
        out.write(canonical(fields) + "\n")
        count += 1
    return count
