"""``broker db upgrade`` then ``broker audit verify/export`` (``broker.cli.audit``)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text

from broker.store.db import Database
from tests.support.cli import broker, write_config


def test_db_upgrade_then_audit_verify_and_export(tmp_path: Path, db_url: str) -> None:
    config = write_config(tmp_path, db_url)
    upgraded = broker("db", "upgrade", "-c", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "revision 0" in upgraded.stdout
    assert broker("db", "upgrade", "-c", str(config)).returncode == 0  # idempotent

    from broker.audit import AuditTrail
    from broker.keys import Keys
    from broker.settings import load_settings

    database = Database(db_url)
    trail = AuditTrail(Keys(load_settings(config).secret_key))
    for i in range(3):
        trail.record(database, event="login", outcome="ok", reason="authenticated", principal=f"user{i}")

    verified = broker("audit", "verify", "-c", str(config))
    assert verified.returncode == 0 and "3 event(s) verified" in verified.stdout

    out = tmp_path / "audit.jsonl"
    exported = broker("audit", "export", "-c", str(config), "-o", str(out))
    assert exported.returncode == 0 and "Exported 3" in exported.stderr
    assert [json.loads(line)["principal"] for line in out.read_text().splitlines()] == ["user0", "user1", "user2"]

    with database.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET principal = 'mallory' WHERE seq = 2"))
    database.dispose()
    broken = broker("audit", "verify", "-c", str(config))
    assert broken.returncode == 1
    assert "broken at event 2" in broken.stderr and "edited" in broken.stderr
