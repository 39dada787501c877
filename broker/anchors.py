"""Signed digests of the audit trail, written where the database cannot rewrite them.

The sealed trail (``broker.audit``) is keyed with the broker's secret key, so whoever holds the database *and*
that key could rebuild it consistently. Like AWS CloudTrail's digest files, every
``audit.anchor.interval_seconds`` the broker signs the state of the trail with an Ed25519 key the database never
sees: the newest sealed segment, the total number of events, an unkeyed running hash over every event's content
(:func:`broker.audit.public_root`), a short tag per new event (to name the first one that changed), and the
SHA-256 of the previous digest. Each digest is a compact JWS (RFC 7515) written to a directory and/or an S3
bucket with Object Lock. :func:`verify_digests` checks the database against them with the public key alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_pem_private_key,
    load_pem_public_key,
)

from broker import jose
from broker.audit import GENESIS, VerifyResult, entry_hash, public_root
from broker.context import Clock, utcnow
from broker.errors import AnchorUnavailable
from broker.logs import get_logger
from broker.settings import AuditAnchorSettings
from broker.store import queries
from broker.store.db import Database, Session

FORMAT = "broker-audit-digest/1"
# RFC 9864's fully specified name for EdDSA over Ed25519.
ALGORITHM = "Ed25519"
# Hex characters of each event's entry hash kept in a digest: enough to name the first changed event (a false
# match is a 1 in 2**32 chance per event); the full running hash is what the signature protects.
TAG_CHARS = 8
SUFFIX = ".jws"

log = get_logger("broker.anchors")


class DigestSink(Protocol):
    """Somewhere digests are written once and read back: a directory, an S3 bucket with Object Lock."""

    location: str

    def put(self, name: str, data: bytes) -> None: ...

    def names(self) -> list[str]: ...

    def get(self, name: str) -> bytes: ...


class DirectorySink:
    """Digest files in a directory, created exclusively and read-only; point it at storage the database's
    administrators cannot write (another host's mount, a WORM volume)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.location = str(path)

    def put(self, name: str, data: bytes) -> None:
        target = self.path / name
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        except FileExistsError:
            if target.read_bytes() == data:
                return  # published before a crash, not yet marked in the database
            raise AnchorUnavailable(f"{target} already holds a different digest; refusing to overwrite it") from None
        except OSError as exc:
            raise AnchorUnavailable(f"cannot write {target}: {exc.strerror}") from None
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def names(self) -> list[str]:
        if not self.path.is_dir():
            raise AnchorUnavailable(f"{self.path} is not a directory of audit digests")
        return sorted(p.name for p in self.path.iterdir() if p.name.endswith(SUFFIX))

    def get(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


def digest_name(number: int) -> str:
    return f"digest-{number:012d}{SUFFIX}"


def sinks_for(config: AuditAnchorSettings) -> list[DigestSink]:
    sinks: list[DigestSink] = []
    if config.directory is not None:
        sinks.append(DirectorySink(config.directory))
    if config.s3 is not None:
        from broker.aws.object_lock import ObjectLockSink

        sinks.append(ObjectLockSink.from_settings(config.s3))
    return sinks


def open_source(source: str) -> DigestSink:
    """A directory path, or ``s3://bucket/prefix`` (endpoint and credentials from boto3's usual environment)."""
    if source.startswith("s3://"):
        from broker.aws.object_lock import ObjectLockSink

        return ObjectLockSink.from_url(source)
    return DirectorySink(Path(source))


def key_id(public: Ed25519PublicKey) -> str:
    return hashlib.sha256(public.public_bytes(Encoding.Raw, PublicFormat.Raw)).hexdigest()[:16]


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM, or the public half of a private key PEM."""
    try:
        key: Any = load_pem_public_key(pem)
    except ValueError:
        try:
            key = load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError):
            raise ValueError("not a PEM Ed25519 public key (`openssl pkey -in KEY -pubout`)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 key")
    return key


@dataclass
class Anchors:
    """Signs and publishes digests. ``publish_due`` is safe in every process at once."""

    config: AuditAnchorSettings
    clock: Clock = utcnow
    sinks: list[DigestSink] = field(default_factory=list)

    def __post_init__(self) -> None:
        assert self.config.signing_key is not None
        private = load_pem_private_key(self.config.signing_key.get_secret_value().encode(), password=None)
        assert isinstance(private, Ed25519PrivateKey)
        self._key = jose.ed25519(private)
        self._kid = key_id(private.public_key())
        if not self.sinks:
            self.sinks = sinks_for(self.config)

    def publish_due(self, db: Database) -> int | None:
        """Sign a digest if the interval has passed and something was sealed since; then publish every digest
        not yet in all sinks. Returns the new digest's number, if one was signed."""
        signed = None
        with db.transaction() as session:
            signed = self._sign_if_due(session)
            pending = [(d.number, d.token) for d in queries.unpublished_audit_digests(session)]
        for number, token in pending:
            for sink in self.sinks:
                sink.put(digest_name(number), token.encode())
            with db.transaction() as session:
                queries.mark_audit_digest_published(session, number=number, now=self.clock())
        return signed

    def _sign_if_due(self, session: Session) -> int | None:
        now = self.clock()
        last = queries.latest_audit_digest(session)
        if last is not None and now - last.created_at < timedelta(seconds=self.config.interval_seconds):
            return None
        head = queries.latest_audit_segment(session)
        if head is None or head.seal is None or (last is not None and head.number <= last.segment):
            return None
        previous = read_payload(last.token) if last is not None else None
        root = previous["root"] if previous else GENESIS
        events = previous["events"] if previous else 0
        first = previous["segment"] + 1 if previous else 0
        segments = []
        for number in range(first, head.number + 1):
            tags, count = [], 0
            for row in queries.iter_segment_events(session, segment=number):
                entry = entry_hash(row)
                root = public_root(root, entry)
                tags.append(entry[:TAG_CHARS])
                count += 1
            segments.append({"number": number, "count": count, "root": root, "tags": "".join(tags)})
            events += count
        number = last.number + 1 if last is not None else 1
        payload = {
            "format": FORMAT,
            "number": number,
            "signed_at": now.isoformat(),
            "previous": hashlib.sha256(last.token.encode()).hexdigest() if last is not None else None,
            "segment": head.number,
            "events": events,
            "root": root,
            "segments": segments,
        }
        body = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
        token = jose.sign_bytes({"alg": ALGORITHM, "kid": self._kid, "typ": "JWS"}, body, self._key)
        added = queries.add_audit_digest(session, number=number, segment=head.number, created_at=now, token=token)
        return number if added else None


def read_payload(token: str) -> dict[str, Any]:
    """A digest's payload without checking its signature (only for continuing our own chain)."""
    payload: dict[str, Any] = json.loads(jose.unverified_payload(token))
    return payload


@dataclass(frozen=True)
class SignedDigest:
    name: str
    token: str
    payload: dict[str, Any]


def load_digests(sink: DigestSink, public: Ed25519PublicKey) -> tuple[list[SignedDigest], str | None]:
    """Every digest in the sink, signature-checked and in order; or the first problem with them."""
    key = jose.ed25519(public)
    digests: list[SignedDigest] = []
    previous: SignedDigest | None = None
    for name in sink.names():
        token = sink.get(name).decode().strip()
        try:
            payload = json.loads(jose.verify_bytes(token, key, ALGORITHM))
        except (jose.Refused, ValueError):
            return digests, f"digest {name} is not signed by this public key: forged or altered"
        if payload.get("format") != FORMAT:
            return digests, f"digest {name} is not a broker audit digest"
        expected = previous.payload["number"] + 1 if previous else 1
        if payload["number"] != expected:
            return digests, f"digest {expected} is missing from {sink.location} (found {payload['number']} next)"
        link = hashlib.sha256(previous.token.encode()).hexdigest() if previous else None
        if payload["previous"] != link:
            return digests, f"digest {name} does not name the digest before it: the digest chain was forked"
        previous = SignedDigest(name, token, payload)
        digests.append(previous)
    return digests, None


def _signed_segments(digests: Sequence[SignedDigest]) -> Iterator[tuple[dict[str, Any], SignedDigest]]:
    for digest in digests:
        for segment in digest.payload["segments"]:
            yield segment, digest


def verify_digests(session: Session, sink: DigestSink, public: Ed25519PublicKey) -> VerifyResult:
    """Check the database against the signed digests, with the public key only; name the first event that no
    longer matches. Digests are read before the database, so segments sealed meanwhile cannot look missing."""
    digests, problem = load_digests(sink, public)
    if problem is not None:
        return VerifyResult(False, 0, problem=problem)
    if not digests:
        return VerifyResult(False, 0, problem=f"no signed digests found in {sink.location}")
    root, checked = GENESIS, 0
    for signed, digest in _signed_segments(digests):
        number, tags = signed["number"], signed["tags"]
        when = f"digest {digest.payload['number']} signed at {digest.payload['signed_at']}"
        segment = queries.get_audit_segment(session, number=number)
        if segment is None:
            return VerifyResult(
                False,
                checked,
                segment=number,
                position=0,
                problem=f"segment {number} ({signed['count']} event(s)) signed in {when} is missing: "
                "the newest events were truncated or the segment deleted",
            )
        position = 0
        for row in queries.iter_segment_events(session, segment=number):
            entry = entry_hash(row)
            expected = tags[position * TAG_CHARS : (position + 1) * TAG_CHARS]
            if row.position != position or entry[:TAG_CHARS] != expected:
                return VerifyResult(
                    False,
                    checked,
                    bad_seq=row.seq,
                    event_id=row.event_id,
                    segment=number,
                    position=position,
                    problem=f"the event does not match what {when} recorded at this position: "
                    "edited, deleted, reordered or inserted after it was signed",
                )
            root = public_root(root, entry)
            position, checked = position + 1, checked + 1
        if position != signed["count"] or root != signed["root"]:
            return VerifyResult(
                False,
                checked,
                segment=number,
                position=position,
                problem=f"the segment holds {position} event(s) but {when} recorded {signed['count']}: "
                "events were deleted from its end",
            )
    last = digests[-1].payload
    return VerifyResult(True, checked, segments=last["segment"] + 1)
