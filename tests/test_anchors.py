"""Signed digests outside the database, on SQLite and PostgreSQL: someone holding the database *and* the
broker's secret key rewrites or truncates the trail; the keyed check passes, the digests name the damage.
Sinks: a directory, and moto's S3 (over HTTP) with Object Lock."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
import pytest
import yaml
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pydantic import SecretStr
from sqlalchemy import delete, select, update

from broker.anchors import Anchors, DirectorySink, digest_name, load_public_key, verify_digests
from broker.audit import AuditTrail, VerifyResult
from broker.aws.object_lock import ObjectLockSink
from broker.keys import Keys
from broker.settings import AuditAnchorSettings, AuditS3Sink
from broker.store.db import Database
from broker.store.models import AuditEvent, AuditSegment
from tests.conftest import SECRET
from tests.support.cli import broker
from tests.support.processes import broker_env
from tests.test_audit import Clock, fill

KEYS = Keys(SecretStr(SECRET))


def said(output: str) -> str:
    """Console output with rich's line wrapping undone."""
    return " ".join(output.split())


def pem_pair() -> tuple[str, bytes]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    return private, key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def keypair() -> tuple[str, bytes]:
    return pem_pair()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def trail(clock: Clock) -> AuditTrail:
    return AuditTrail(KEYS, clock)


@pytest.fixture
def anchors(tmp_path: Path, keypair: tuple[str, bytes], clock: Clock) -> Anchors:
    config = AuditAnchorSettings(signing_key=SecretStr(keypair[0]), directory=tmp_path / "digests", interval_seconds=60)
    return Anchors(config, clock=clock)


def anchored(database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, rounds: int = 2) -> None:
    """``rounds`` digests, each after three more sealed events."""
    for _ in range(rounds):
        fill(database, trail, 3)
        trail.seal(database)
        assert anchors.publish_due(database) is not None
        clock.now += timedelta(seconds=61)


def against_digests(database: Database, sink: DirectorySink | ObjectLockSink, public: bytes) -> VerifyResult:
    with database.transaction() as s:
        return verify_digests(s, sink, load_public_key(public))


def keyed(database: Database, trail: AuditTrail) -> VerifyResult:
    with database.transaction() as s:
        return trail.verify_store(s)


def rewrite_with_the_key(database: Database, trail: AuditTrail, seq: int) -> None:
    """What someone holding the database and the secret key can do: edit an event, then recompute its MAC and
    every segment from it onwards, so that the keyed check passes."""
    with database.transaction() as s:
        row = s.get(AuditEvent, seq)
        assert row is not None and row.segment is not None
        row.principal = "someone-else"
        row.mac = trail.event_mac(row)
        first = row.segment
        s.execute(update(AuditEvent).where(AuditEvent.segment >= first).values(segment=None, position=None, chain=None))
        s.execute(delete(AuditSegment).where(AuditSegment.number >= first))
    trail.seal(database)


def test_digests_are_signed_chained_and_read_only(
    database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, keypair: tuple[str, bytes], tmp_path: Path
) -> None:
    anchored(database, trail, anchors, clock)
    # Nothing new sealed: no new digest, however long it has been.
    assert anchors.publish_due(database) is None
    sink = DirectorySink(tmp_path / "digests")
    assert sink.names() == [digest_name(1), digest_name(2)]
    assert (tmp_path / "digests" / digest_name(1)).stat().st_mode & 0o777 == 0o444
    result = against_digests(database, sink, keypair[1])
    assert (result.ok, result.checked) == (True, 6)


def test_rewrite_with_the_secret_key_passes_the_keyed_check_but_not_the_digests(
    database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, keypair: tuple[str, bytes], tmp_path: Path
) -> None:
    anchored(database, trail, anchors, clock)
    with database.transaction() as s:
        victim = s.scalars(select(AuditEvent).where(AuditEvent.segment == 1, AuditEvent.position == 1)).one()
    rewrite_with_the_key(database, trail, victim.seq)
    assert keyed(database, trail).ok  # consistent again: the secret key alone cannot catch this
    result = against_digests(database, DirectorySink(tmp_path / "digests"), keypair[1])
    assert (result.ok, result.bad_seq, result.event_id) == (False, victim.seq, victim.event_id)
    assert (result.segment, result.position, result.checked) == (1, 1, 1)
    assert "does not match what digest 1 signed at" in (result.problem or "")
    assert "after it was signed" in (result.problem or "")


def test_truncation_of_the_newest_segments_is_caught_by_the_digests(
    database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, keypair: tuple[str, bytes], tmp_path: Path
) -> None:
    anchored(database, trail, anchors, clock)
    with database.transaction() as s:
        newest = s.scalars(select(AuditSegment.number).order_by(AuditSegment.number.desc())).first()
        s.execute(delete(AuditEvent).where(AuditEvent.segment == newest))
        s.execute(delete(AuditSegment).where(AuditSegment.number == newest))
    assert keyed(database, trail).ok
    result = against_digests(database, DirectorySink(tmp_path / "digests"), keypair[1])
    assert (result.ok, result.segment, result.checked) == (False, newest, 3)
    assert f"segment {newest} (3 event(s)) signed in digest 2" in (result.problem or "")
    assert "the newest events were truncated" in (result.problem or "")


def test_events_deleted_from_a_signed_segment_are_named(
    database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, keypair: tuple[str, bytes], tmp_path: Path
) -> None:
    anchored(database, trail, anchors, clock, rounds=1)
    with database.transaction() as s:
        last = s.scalars(select(AuditEvent).where(AuditEvent.segment == 1, AuditEvent.position == 2)).one()
        s.execute(delete(AuditEvent).where(AuditEvent.seq == last.seq))
        # ... and, with the key, the segment is resealed to match.
        segment = s.get(AuditSegment, 1)
        assert segment is not None
        segment.count, segment.hash = 2, s.scalars(select(AuditEvent.chain).where(AuditEvent.position == 1)).one()
        segment.seal = trail.segment_seal(segment)
    assert keyed(database, trail).ok
    result = against_digests(database, DirectorySink(tmp_path / "digests"), keypair[1])
    assert (result.ok, result.segment, result.position) == (False, 1, 2)
    assert "holds 2 event(s) but digest 1" in (result.problem or "") and "recorded 3" in (result.problem or "")


def test_forged_or_missing_digests_are_named(
    database: Database, trail: AuditTrail, anchors: Anchors, clock: Clock, keypair: tuple[str, bytes], tmp_path: Path
) -> None:
    anchored(database, trail, anchors, clock)
    folder = tmp_path / "digests"
    other = pem_pair()
    assert "is not signed by this public key" in (
        against_digests(database, DirectorySink(folder), other[1]).problem or ""
    )
    (folder / digest_name(1)).unlink()
    missing = against_digests(database, DirectorySink(folder), keypair[1])
    assert not missing.ok and f"digest 1 is missing from {folder} (found 2 next)" in (missing.problem or "")


@pytest.fixture
def locked_bucket(sts_endpoint: str) -> Iterator[str]:
    """A bucket in moto's S3 (the session's moto server, over HTTP) created with Object Lock."""
    name = f"audit-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=sts_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    yield name


def test_digests_in_s3_with_object_lock(
    tmp_path: Path,
    db_url: str,
    database: Database,
    trail: AuditTrail,
    clock: Clock,
    keypair: tuple[str, bytes],
    sts_endpoint: str,
    locked_bucket: str,
) -> None:
    s3_config = AuditS3Sink(bucket=locked_bucket, prefix="prod/", endpoint_url=sts_endpoint, region="us-east-1")
    config = AuditAnchorSettings(signing_key=SecretStr(keypair[0]), s3=s3_config)
    anchors = Anchors(config, clock=clock)
    anchored(database, trail, anchors, clock)
    sink = ObjectLockSink.from_settings(s3_config)
    assert sink.names() == [digest_name(1), digest_name(2)]
    assert against_digests(database, sink, keypair[1]).ok
    # Object Lock: the digest cannot be deleted or overwritten before its retention date.
    s3 = boto3.client("s3", endpoint_url=sts_endpoint, region_name="us-east-1")
    version = s3.head_object(Bucket=locked_bucket, Key="prod/" + digest_name(1))
    assert version["ObjectLockMode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as refused:
        s3.delete_object(Bucket=locked_bucket, Key="prod/" + digest_name(1), VersionId=version["VersionId"])
    assert refused.value.response["Error"]["Code"] == "AccessDenied"
    with database.transaction() as s:
        victim = s.scalars(select(AuditEvent).where(AuditEvent.segment == 2, AuditEvent.position == 0)).one()
    rewrite_with_the_key(database, trail, victim.seq)
    result = against_digests(database, sink, keypair[1])
    assert (result.ok, result.bad_seq, result.segment) == (False, victim.seq, 2)
    # The auditor's command reads the bucket through boto3's usual environment.
    public_file = tmp_path / "anchor.pub.pem"
    public_file.write_bytes(keypair[1])
    env = broker_env(AWS_ENDPOINT_URL_S3=sts_endpoint, AWS_REGION="us-east-1")
    source = f"s3://{locked_bucket}/prod/"
    audited = broker(
        "audit", "verify", "--digests", source, "--public-key", str(public_file), "--database-url", db_url, env=env
    )
    assert audited.returncode == 1 and f"broken at event {victim.seq}, segment 2 position 0" in said(audited.stderr)


def test_cli_verify_with_digests(
    tmp_path: Path, db_url: str, database: Database, keypair: tuple[str, bytes], clock: Clock
) -> None:
    folder = tmp_path / "digests"
    key_file, public_file = tmp_path / "anchor.pem", tmp_path / "anchor.pub.pem"
    key_file.write_text(keypair[0])
    public_file.write_bytes(keypair[1])
    config = tmp_path / "broker.yaml"
    anchor = {"signing_key": f"file:{key_file}", "directory": str(folder)}
    settings = {"mode": "production", "public_url": "https://broker.example.com", "database_url": db_url}
    config.write_text(yaml.safe_dump({**settings, "secret_key": SECRET, "audit": {"anchor": anchor}}))
    trail = AuditTrail(KEYS)  # the real clock: the CLI checks the seal window against now
    anchors = Anchors(AuditAnchorSettings(signing_key=SecretStr(keypair[0]), directory=folder), clock=trail.clock)
    fill(database, trail, 3)
    sealed = broker("audit", "seal", "-c", str(config))  # one sealer pass and the first digest
    assert sealed.returncode == 0 and "Sealed 3 event(s)." in said(sealed.stdout), sealed.stderr
    assert anchors.publish_due(database) is None  # already signed by `broker audit seal`
    assert (folder / digest_name(1)).exists()

    intact = broker("audit", "verify", "-c", str(config))
    assert intact.returncode == 0, intact.stderr
    assert "3 event(s) verified (3 sealed in 2 segment(s), 0 awaiting the sealer" in said(intact.stdout)
    assert f"Matches the signed digests in {folder}: 3 event(s)" in said(intact.stdout)
    # An auditor's check: the public key and a database URL, no configuration and no secret key.
    public_only = broker(
        "audit", "verify", "--digests", str(folder), "--public-key", str(public_file), "--database-url", db_url
    )
    assert public_only.returncode == 0, public_only.stderr
    assert "Audit trail matches the signed digests: 3 event(s) in 2 segment(s)" in said(public_only.stdout)

    with database.transaction() as s:
        victim = s.scalars(select(AuditEvent).where(AuditEvent.position == 2, AuditEvent.segment == 1)).one()
    rewrite_with_the_key(database, trail, victim.seq)
    broken = broker("audit", "verify", "-c", str(config))
    assert broken.returncode == 1
    assert f"Audit trail (digests in {folder}) broken at event {victim.seq}, segment 1 position 2" in said(
        broken.stderr
    )
    assert "after it was signed" in said(broken.stderr)
    public = broker(
        "audit", "verify", "--digests", str(folder), "--public-key", str(public_file), "--database-url", db_url
    )
    assert public.returncode == 1 and f"broken at event {victim.seq}" in said(public.stderr)
    assert victim.event_id in said(public.stderr)

    no_key = broker("audit", "verify", "--digests", str(folder), "--database-url", db_url)
    assert no_key.returncode == 2 and "--digests needs --public-key PEM" in said(no_key.stderr)
    wrong = tmp_path / "wrong.pem"
    wrong.write_text("not a key")
    bad_key = broker("audit", "verify", "--digests", str(folder), "--public-key", str(wrong), "--database-url", db_url)
    assert bad_key.returncode == 2 and "The public key cannot be used" in said(bad_key.stderr)
    nowhere = broker(
        "audit",
        "verify",
        "--digests",
        str(tmp_path / "absent"),
        "--public-key",
        str(public_file),
        "--database-url",
        db_url,
    )
    assert nowhere.returncode == 2 and "is not a directory of audit digests" in said(nowhere.stderr)
