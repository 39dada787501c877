"""The audit trail: every decision is an event in SQL, keyed, sealed in segments, and failing closed.

An event is one INSERT in the caller's transaction, with no shared lock: it carries its own ``mac`` =
HMAC(chain key, canonical JSON of its fields, the writing process included), so it commits with the action or
not at all. A sealer (one at a time across the fleet, :meth:`AuditTrail.seal`) then integrates committed events
in batches, as Certificate Transparency logs integrate entries: it gives each a segment and a position and a
keyed running ``chain`` value, and writes a segment row whose HMAC ``seal`` covers its count, its last chain
value and the previous segment's. Verification walks segments in order and names the first event edited,
deleted, reordered or inserted. Signed digests outside the database (``broker.anchors``) catch what the key
holder could rebuild. Values that identify a secret are stored only as keyed HMACs (:meth:`AuditTrail.ref`).

Every MAC and seal records the id of the root secret it was made with (``key_id``, ``broker.keys``): appends
and new segments use the newest key, verification uses the recorded one (any listed key for rows from before
key ids), so a trail that spans a rotation verifies while every key it names is listed.
:meth:`AuditTrail.reseal` re-keys the whole trail under the newest key after checking it, so an old key can
then be removed; the signed digests cover only unkeyed content hashes and stay valid.

The module is longer than most (~600 lines) on purpose: appending, sealing, re-sealing and verifying are the
four uses of the same keyed formats (event MAC, chain value, segment seal), and keeping them side by side is
what keeps a writer and its verifier from drifting apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any

from broker.context import Clock, Context, utcnow
from broker.errors import AuditUnavailable, BrokerError, KeysUnusable, ServiceUnavailable
from broker.identity import Identity
from broker.keys import Keys
from broker.store import audit_trail, queries
from broker.store.db import Database, Session
from broker.store.models import AuditEvent, AuditSegment

GENESIS = "0" * 64
# Detail keys whose values must never be stored in clear; they are replaced by keyed HMAC references.
_SECRET_WORDS = frozenset({"secret", "password", "token", "assertion", "code", "cookie", "totp", "otp", "verifier"})
# How long a committed event may wait for the sealer beyond its interval (slow transactions, a sealer pass,
# a restart) before `verify` calls it stalled or inserted; settings.audit.seal_grace_seconds overrides it.
DEFAULT_SEAL_WINDOW = timedelta(seconds=31)
# Events integrated per segment; a larger backlog becomes several segments in one pass.
DEFAULT_SEAL_BATCH = 5000

# The columns an append writes; the database assigns ``seq``, the sealer the rest.
_INSERTED = (
    "event_id",
    "occurred_at",
    "writer",
    "event",
    "outcome",
    "reason",
    "principal",
    "store",
    "channel",
    "client_ip",
    "request_id",
    "detail",
    "mac",
    "key_id",
)


def canonical(fields: Mapping[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def is_legacy(row: AuditEvent) -> bool:
    """Written by the one-row-at-a-time chain before segments existed (segment 0 after the upgrade)."""
    return row.prev_hash is not None


def _legacy_fields(row: AuditEvent) -> dict[str, Any]:
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


def event_fields(row: AuditEvent) -> dict[str, Any]:
    """The fields an event's MAC and entry hash cover (``seq`` is a storage id, so it is not among them)."""
    return {
        "v": 2,
        "event_id": row.event_id,
        "occurred_at": row.occurred_at.astimezone(UTC).isoformat(),
        "writer": row.writer,
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


def entry_hash(row: AuditEvent) -> str:
    """SHA-256 of an event's content: what signed digests commit to, recomputable without any secret."""
    if is_legacy(row):
        fields = {**_legacy_fields(row), "prev_hash": row.prev_hash, "hash": row.hash}
    else:
        fields = event_fields(row)
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


def public_root(previous: str, entry: str) -> str:
    """The unkeyed running hash over entry hashes that digests sign (``broker.anchors``)."""
    return hashlib.sha256(f"{previous}\n{entry}".encode()).hexdigest()


def writer_id() -> str:
    """This process: host, pid and a nonce per start (pids are reused)."""
    return f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class VerifyResult:
    """What `broker audit verify` found. On failure the first bad event is named by as much as is known."""

    ok: bool
    checked: int
    bad_seq: int | None = None
    problem: str | None = None
    event_id: str | None = None
    segment: int | None = None
    position: int | None = None
    segments: int = 0
    unsealed: int = 0

    @property
    def where(self) -> str:
        parts = []
        if self.bad_seq is not None:
            parts.append(f"event {self.bad_seq}")
        if self.segment is not None:
            at = f" position {self.position}" if self.position is not None else ""
            parts.append(f"segment {self.segment}{at}")
        if self.event_id:
            parts.append(f"event_id {self.event_id}")
        return ", ".join(parts) or "the trail"


class AuditTrail:
    def __init__(self, keys: Keys, clock: Clock = utcnow, *, seal_window: timedelta = DEFAULT_SEAL_WINDOW) -> None:
        self._keys = keys
        self._clock = clock
        self.clock = clock
        self.seal_window = seal_window
        self.writer = writer_id()
        # Called with every appended event, inside its transaction (metrics and alerts, ``broker.monitoring``).
        # An observer must be cheap and must not raise; one that does is ignored, never the audit write.
        self.observers: list[Callable[[AuditEvent], None]] = []
        # Called after every :meth:`record` with its duration in seconds and whether it committed (metrics).
        self.timers: list[Callable[[float, bool], None]] = []

    def ref(self, value: str | bytes) -> str:
        """A keyed HMAC that identifies a secret value (for correlation) without revealing it."""
        return "hmac:" + self._keys.mac("audit-ref", value)[:32]

    # ------------------------------------------------------------ keyed values

    @property
    def key_id(self) -> str:
        """The root key new MACs and seals are made with."""
        return self._keys.current_id

    @property
    def key_ids(self) -> tuple[str, ...]:
        return self._keys.ids

    def _mac(self, label: str, message: str, key_id: str | None = None) -> str:
        key = self._keys.key("audit-chain", key_id)
        return hmac.new(key, f"{label}\n{message}".encode(), hashlib.sha256).hexdigest()

    def event_mac(self, row: AuditEvent, key_id: str | None = None) -> str:
        """The event's MAC under ``key_id``, else the key it records, else the newest."""
        return self._mac("event", canonical(event_fields(row)), key_id or row.key_id)

    def chain(self, previous: str, row: AuditEvent, key_id: str | None = None) -> str:
        """The keyed running value binding an event to its place: HMAC(previous chain value, entry hash)."""
        return self._mac("chain", f"{previous}\n{entry_hash(row)}", key_id)

    def _candidates(self, recorded: str | None) -> tuple[str, ...]:
        """The keys to check a value with: the one it records (if listed), or every listed key."""
        if recorded is None:
            return self._keys.ids
        return (recorded,) if recorded in self._keys.ids else ()

    def _event_mac_ok(self, row: AuditEvent) -> bool:
        found = False
        for kid in self._candidates(row.key_id):
            found |= hmac.compare_digest(self.event_mac(row, kid), row.mac or "")
        return row.mac is not None and found

    def _segment_key(self, segment: AuditSegment) -> str | None:
        """The listed key whose seal matches the segment row, or None."""
        for kid in self._candidates(segment.key_id):
            if segment.seal is not None and hmac.compare_digest(self.segment_seal(segment, kid), segment.seal):
                return kid
        return None

    def _missing_key(self, recorded: str | None) -> str | None:
        if recorded is None or recorded in self._keys.ids:
            return None
        return (
            f"it was made with secret key {recorded!r}, which is not configured: list it again in secret_keys "
            "(remove an old key only after `broker keys re-encrypt`)"
        )

    def segment_seal(self, segment: AuditSegment, key_id: str | None = None) -> str:
        sealed_at = segment.sealed_at.astimezone(UTC).isoformat() if segment.sealed_at else None
        fields = {
            "number": segment.number,
            "count": segment.count,
            "prev_hash": segment.prev_hash,
            "hash": segment.hash,
            "sealed_at": sealed_at,
        }
        return self._mac("segment", canonical(fields), key_id or segment.key_id)

    def _legacy_ok(self, prev_hash: str, row: AuditEvent) -> bool:
        message = (prev_hash + "\n" + canonical(_legacy_fields(row))).encode()
        found = False
        for kid in self._keys.ids:
            digest = hmac.new(self._keys.key("audit-chain", kid), message, hashlib.sha256).hexdigest()
            found |= hmac.compare_digest(digest, row.hash or "")
        return found

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

    # ------------------------------------------------------------ appending

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
        """Append one event inside the caller's transaction (so it commits, or not, with the action).

        One INSERT and no lock shared with other writers: concurrent appends from every process commit side by
        side, and the sealer orders them later.
        """
        ctx = ctx or Context()
        fields = dict(
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
            writer=self.writer,
            key_id=self.key_id,
        )
        row = audit_trail.append_audit_event(session, fields=fields, mac=self.event_mac, inserted=_INSERTED)
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
        started = time.perf_counter()
        committed = False
        try:
            with db.transaction() as session:
                row = self.append(session, **kwargs)
            committed = True
            return row
        except BrokerError as exc:
            raise AuditUnavailable() from exc
        finally:
            for timer in self.timers:
                with contextlib.suppress(Exception):
                    timer(time.perf_counter() - started, committed)

    def deny(self, db: Database, error: BrokerError, **kwargs: Any) -> BrokerError:
        """Audit a refusal with the error's reason code and return the error for the caller to raise.

        Raised inside an open transaction, the refusal is recorded once that transaction has rolled back
        (``Database.after_transaction``): never beside it, and never undone by its rollback.
        """
        detail = dict(kwargs.pop("detail", None) or {})
        detail.setdefault("error", error.code)
        db.after_transaction(lambda: self.record(db, outcome="denied", reason=error.reason, detail=detail, **kwargs))
        return error

    # ------------------------------------------------------------ sealing

    def seal(self, db: Database, *, batch: int = DEFAULT_SEAL_BATCH) -> int:
        """One sealer pass: integrate every committed, unsealed event into new segments; returns how many.

        Returns 0 at once when another process is sealing. Events whose transactions commit after this pass
        read the table simply join a later segment, so nobody waits for a lower ``seq`` to commit.
        """
        with db.transaction() as session:
            if not queries.try_lock_audit_sealer(session):
                return 0
            now = self._clock()
            zero = queries.get_audit_segment(session, number=0)
            if zero is None:
                zero = audit_trail.add_audit_segment(
                    session,
                    number=0,
                    count=0,
                    prev_hash=GENESIS,
                    hash=GENESIS,
                    sealed_at=now,
                    seal=self.segment_seal,
                    key_id=self.key_id,
                )
            elif zero.seal is None:
                self._seal_legacy(session, zero, now)
            head = queries.latest_audit_segment(session)
            assert head is not None
            sealed = 0
            while True:
                rows = queries.unsealed_audit_events(session, limit=batch)
                if not rows:
                    break
                number, chain, placements = head.number + 1, head.hash, []
                for position, row in enumerate(rows):
                    chain = self.chain(chain, row, self.key_id)
                    placements.append({"seq": row.seq, "segment": number, "position": position, "chain": chain})
                queries.seal_audit_events(session, placements=placements)
                segment = audit_trail.add_audit_segment(
                    session,
                    number=number,
                    count=len(rows),
                    prev_hash=head.hash,
                    hash=chain,
                    sealed_at=now,
                    seal=self.segment_seal,
                    key_id=self.key_id,
                )
                head, sealed = segment, sealed + len(rows)
                if len(rows) < batch:
                    break
            return sealed

    def _seal_legacy(self, session: Session, zero: AuditSegment, now: datetime) -> None:
        """Seal segment 0, the events written before segments existed, as the migration left them."""
        chain, placements = GENESIS, []
        for row in queries.iter_segment_events(session, segment=0):
            chain = self.chain(chain, row, self.key_id)
            placements.append({"seq": row.seq, "segment": 0, "position": row.position, "chain": chain})
        queries.seal_audit_events(session, placements=placements)
        # ``count`` stays what the old head row named, so a tail deleted before the upgrade is still reported.
        audit_trail.seal_legacy_segment(
            session, segment=zero, hash=chain, sealed_at=now, seal=self.segment_seal, key_id=self.key_id
        )

    def reseal(self, db: Database) -> int:
        """Re-key the whole trail under the newest key: every event MAC, chain value and segment seal.

        Seals what is pending, then, holding the sealer's lock, checks the trail with every listed key and
        refuses (``audit_unverifiable``) if anything is wrong, so a re-seal never launders a tampered trail.
        Content hashes do not change, so signed digests stay valid. Returns how many events were re-keyed.
        """
        self.seal(db)
        current = self.key_id
        with db.transaction() as session:
            if not queries.try_lock_audit_sealer(session):
                raise ServiceUnavailable(
                    "Another broker process is sealing the audit trail right now; run the command again.",
                    reason="audit_sealer_busy",
                )
            result = self.verify_store(session)
            if not result.ok:
                raise KeysUnusable(
                    f"The audit trail does not verify ({result.problem}; at {result.where}), so it is not re-sealed. "
                    "Run `broker audit verify` and investigate first.",
                    reason="audit_unverifiable",
                )
            prev, rekeyed = GENESIS, 0
            for segment in list(queries.iter_audit_segments(session)):
                chain, placements, macs = prev, [], []
                for row in queries.iter_segment_events(session, segment=segment.number):
                    if not is_legacy(row):
                        macs.append({"seq": row.seq, "mac": self.event_mac(row, current), "key_id": current})
                    chain = self.chain(chain, row, current)
                    placements.append(
                        {"seq": row.seq, "segment": segment.number, "position": row.position, "chain": chain}
                    )
                queries.seal_audit_events(session, placements=placements)
                queries.rekey_audit_events(session, macs=macs)
                segment.prev_hash, segment.hash, segment.key_id = prev, chain, current
                segment.seal = self.segment_seal(segment, current)
                session.flush()
                prev, rekeyed = chain, rekeyed + len(placements)
            unsealed = [
                {"seq": row.seq, "mac": self.event_mac(row, current), "key_id": current}
                for row in queries.iter_unsealed_audit_events(session)
            ]
            queries.rekey_audit_events(session, macs=unsealed)
            return rekeyed + len(unsealed)

    # ------------------------------------------------------------ verifying

    def verify_store(self, session: Session, *, now: datetime | None = None) -> VerifyResult:
        """Walk every segment in order, then the events awaiting the sealer; name the first problem."""
        now = now or self._clock()
        for event_id in queries.duplicate_audit_event_ids(session):
            problem = "the same event appears twice: a copy was inserted"
            return VerifyResult(False, 0, problem=problem, event_id=event_id)
        checked, expected, prev_hash, segments = 0, 0, GENESIS, 0
        unsealed_zero = False
        for segment in queries.iter_audit_segments(session):
            if segment.number != expected:
                return VerifyResult(
                    False,
                    checked,
                    segment=expected,
                    segments=segments,
                    problem=f"segment {expected} is missing (found {segment.number} next): deleted",
                )
            if segment.prev_hash != prev_hash:
                return VerifyResult(
                    False,
                    checked,
                    segment=segment.number,
                    segments=segments,
                    problem="the segment does not follow the previous one: segments inserted, deleted or reordered",
                )
            if segment.number == 1 and unsealed_zero:
                # The first sealer pass seals segment 0 before anything else, so its seal was removed.
                return VerifyResult(False, checked, segment=0, segments=segments, problem="segment 0 lost its seal")
            key_id = self.key_id
            if segment.seal is None:
                if segment.number != 0:
                    return VerifyResult(
                        False, checked, segment=segment.number, segments=segments, problem="the segment has no seal"
                    )
                unsealed_zero = True
            else:
                found = self._segment_key(segment)
                if found is None:
                    missing = self._missing_key(segment.key_id)
                    return VerifyResult(
                        False,
                        checked,
                        segment=segment.number,
                        segments=segments,
                        problem=f"the segment cannot be checked: {missing}"
                        if missing
                        else "the segment's seal does not match its count and hash: the segment row was edited",
                    )
                key_id = found
            failure, count = self._verify_segment(session, segment, checked, segments, key_id)
            if failure is not None:
                return failure
            checked += count
            prev_hash, expected, segments = segment.hash, expected + 1, segments + 1
        return self._verify_unsealed(session, checked, segments, now)

    def _verify_segment(
        self, session: Session, segment: AuditSegment, checked: int, segments: int, key_id: str
    ) -> tuple[VerifyResult | None, int]:
        def fail(row: AuditEvent | None, problem: str, position: int | None = None) -> tuple[VerifyResult, int]:
            return (
                VerifyResult(
                    False,
                    checked + count,
                    bad_seq=row.seq if row else None,
                    problem=problem,
                    event_id=row.event_id if row else None,
                    segment=segment.number,
                    position=row.position if row and position is None else position,
                    segments=segments,
                ),
                count,
            )

        sealed = segment.seal is not None
        chain, legacy_prev, count = segment.prev_hash, GENESIS, 0
        for row in queries.iter_segment_events(session, segment=segment.number):
            if row.position != count:
                # The next row sits further on: the event that belonged here is gone.
                return fail(row, f"the event at position {count} is missing (found {row.position} next): deleted")
            chain = self.chain(chain, row, key_id)
            chained = hmac.compare_digest(chain, row.chain or "")
            if segment.number == 0:
                if not is_legacy(row) or row.seq != count + 1:
                    return fail(row, "the event does not belong in the legacy segment: inserted or reordered")
                if row.prev_hash != legacy_prev:
                    return fail(row, "prev_hash does not match the previous event: inserted, deleted or reordered")
                # Once re-sealed under a newer key, the seal's chain covers the legacy hash (its key may be gone).
                if not self._legacy_ok(legacy_prev, row) and not (sealed and chained):
                    return fail(row, "the contents do not match the event's hash: edited")
                legacy_prev = row.hash or ""
            elif not self._event_mac_ok(row):
                missing = self._missing_key(row.key_id)
                if missing:
                    return fail(row, f"the event cannot be checked: {missing}")
                return fail(row, "the contents do not match the event's MAC: edited (or inserted without the key)")
            if sealed and not chained:
                return fail(row, "the event is not the one sealed at this position: reordered or inserted")
            count += 1
        if count != segment.count:
            verb = "deleted from its end" if count < segment.count else "inserted at its end"
            return fail(
                None, f"the segment was sealed with {segment.count} event(s) but holds {count}: {verb}", position=count
            )
        if sealed and not hmac.compare_digest(chain, segment.hash):
            return fail(None, "the segment's events do not end at its sealed hash: events changed", position=count)
        return None, count

    def _verify_unsealed(self, session: Session, checked: int, segments: int, now: datetime) -> VerifyResult:
        unsealed, overdue = 0, None
        for row in queries.iter_unsealed_audit_events(session):
            if not self._event_mac_ok(row):
                missing = self._missing_key(row.key_id)
                return VerifyResult(
                    False,
                    checked + unsealed,
                    bad_seq=row.seq,
                    event_id=row.event_id,
                    segments=segments,
                    unsealed=unsealed,
                    problem=f"the unsealed event cannot be checked: {missing}"
                    if missing
                    else "the unsealed event's contents do not match its MAC: edited (or inserted without the key)",
                )
            if overdue is None and row.occurred_at < now - self.seal_window:
                overdue = row
            unsealed += 1
        if overdue is not None:
            return VerifyResult(
                False,
                checked + unsealed,
                bad_seq=overdue.seq,
                event_id=overdue.event_id,
                segments=segments,
                unsealed=unsealed,
                problem=(
                    f"the event is older than the seal window ({int(self.seal_window.total_seconds())} s) and still "
                    "unsealed: the sealer is stalled, or the event was inserted after the fact"
                ),
            )
        return VerifyResult(True, checked + unsealed, segments=segments, unsealed=unsealed)


def iter_chain_order(session: Session) -> Iterator[AuditEvent]:
    """Sealed events segment by segment in position order, then those awaiting the sealer by ``seq``."""
    for segment in queries.iter_audit_segments(session):
        yield from queries.iter_segment_events(session, segment=segment.number)
    yield from queries.iter_unsealed_audit_events(session)


def export_jsonl(session: Session, out: IO[str]) -> int:
    """Write every event as one JSON object per line, in chain order; returns the count."""
    count = 0
    for row in iter_chain_order(session):
        fields = _legacy_fields(row)
        fields.update(writer=row.writer, segment=row.segment, position=row.position, mac=row.mac, chain=row.chain)
        if is_legacy(row):
            fields.update(prev_hash=row.prev_hash, hash=row.hash)
        out.write(canonical(fields) + "\n")
        count += 1
    return count
