"""The sealer thread on SQLite and PostgreSQL: it seals in the background, survives a failing digest sink, and
seals once more when it stops."""

from __future__ import annotations

import time
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import func, select

from broker.anchors import Anchors, DirectorySink
from broker.audit import AuditTrail
from broker.keys import Keys
from broker.sealer import Sealer
from broker.settings import AuditAnchorSettings, AuditSettings
from broker.store.db import Database
from broker.store.models import AuditDigest, AuditEvent
from tests.conftest import SECRET
from tests.test_anchors import pem_pair


def unsealed(database: Database) -> int:
    with database.transaction() as s:
        return int(s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.segment.is_(None))) or 0)


def test_seals_in_the_background_and_on_stop(database: Database) -> None:
    trail = AuditTrail(Keys(SecretStr(SECRET)))
    sealer = Sealer(trail, database, AuditSettings(seal_interval_seconds=0.05))
    sealer.start()
    try:
        trail.record(database, event="login", outcome="ok", reason="authenticated")
        deadline = time.monotonic() + 20
        while unsealed(database) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert unsealed(database) == 0
    finally:
        sealer.stop()
    trail.record(database, event="logout", outcome="ok", reason="user_logout")
    assert unsealed(database) == 1
    sealer.stop()  # a stopped sealer still seals once on the way out
    assert unsealed(database) == 0


def test_a_failing_sink_keeps_the_digest_for_the_next_pass(database: Database, tmp_path: Path) -> None:
    trail = AuditTrail(Keys(SecretStr(SECRET)))
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the digest directory should be")
    config = AuditAnchorSettings(signing_key=SecretStr(pem_pair()[0]), directory=blocked)
    sealer = Sealer(trail, database, AuditSettings(anchor=config), Anchors(config))
    trail.record(database, event="login", outcome="ok", reason="authenticated")
    sealer.stop()  # one pass: sealed, digest signed, the sink refuses (logged, not raised)
    assert unsealed(database) == 0
    with database.transaction() as s:
        (digest,) = s.scalars(select(AuditDigest)).all()
        assert digest.published_at is None
    blocked.unlink()
    sealer.stop()
    assert DirectorySink(blocked).names() == ["digest-000000000001.jws"]
    with database.transaction() as s:
        assert s.scalars(select(AuditDigest.published_at)).one() is not None
