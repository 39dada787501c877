"""`broker db upgrade|downgrade|current|history` as an operator runs them, and an upgrade and a rollback
across two releases on PostgreSQL while the older release serves (docs/operations.md, "Upgrading" and
"Rolling back a release")."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import KeySet
from sqlalchemy import create_engine, inspect, text

from broker.store.db import Database
from tests.conftest import SECRET, base_config, postgres_admin_url
from tests.support.broker_process import BrokerProcess, write_config
from tests.support.cli_broker import PASSWORD, TOTP_SECRET, local_store
from tests.support.portal import csrf_from, env_credentials, login_local
from tests.support.processes import broker_env, free_port
from tests.support.workload_tokens import TestIssuer

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0013_signing_key_revocation"
NEXT = "0099_next_release"
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
PAYMENTS = "https://payments.internal"


def release(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``broker ARGS`` run from one release's tree (its own broker package and migrations)."""
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        capture_output=True,
        text=True,
        cwd=root,
        timeout=120,
        env=broker_env(PYTHONPATH=str(root), COLUMNS="200"),
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def minimal_config(tmp_path: Path, db_url: str) -> Path:
    return write_config(
        tmp_path / "broker.yaml",
        {
            "mode": "production",
            "public_url": "https://broker.example.com",
            "database_url": db_url,
            "secret_key": SECRET,
        },
    )


# ---------------------------------------------------------------- one release


def test_current_and_history_name_ids_and_file_names(tmp_path: Path, db_url: str) -> None:
    config = str(minimal_config(tmp_path, db_url))
    current = ok(release(ROOT, "db", "current", "-c", config))
    assert f"Database at revision {HEAD}." in current
    assert f"This release's newest revision: {HEAD}." in current and "Up to date." in current
    history = ok(release(ROOT, "db", "history")).splitlines()
    assert history[0].split() == ["0001", "contract", "(file", "0001_initial_schema.py)"]
    assert history[-1].split() == [HEAD, "expand"]
    unknown = release(ROOT, "db", "upgrade", "--to", "0013_tomorrow", "-c", config)
    assert unknown.returncode == 1 and "This release has no revision '0013_tomorrow'" in unknown.stderr


def test_an_impossible_downgrade_says_restore_the_backup(tmp_path: Path, db_url: str) -> None:
    config = str(minimal_config(tmp_path, db_url))
    refused = release(ROOT, "db", "downgrade", "--to", "0001_initial_schema", "-c", config)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "0007_audit_segments cannot be downgraded" in refused.stderr
    assert "Restore the pre-upgrade backup instead." in refused.stderr
    assert f"The database is still at {HEAD}." in refused.stderr
    assert f"Database at revision {HEAD}." in ok(release(ROOT, "db", "current", "-c", config))


def test_a_contracted_newer_schema_stops_upgrade_and_serve(tmp_path: Path, db_url: str) -> None:
    config = str(minimal_config(tmp_path, db_url))
    database = Database(db_url)
    with database.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": NEXT})
        conn.execute(text("UPDATE schema_compatibility SET serves_from = :v"), {"v": NEXT})
    try:
        upgraded = release(ROOT, "db", "upgrade", "-c", config)
        assert upgraded.returncode == 1 and "Traceback" not in upgraded.stderr
        assert f"The database is at revision {NEXT}, which this release does not know" in upgraded.stderr
        assert f"This release's newest revision is {HEAD}." in upgraded.stderr
        assert f"the newer release's `broker db downgrade --to {HEAD}`" in upgraded.stderr
        served = release(ROOT, "serve", "-c", config, "--port", str(free_port()))
        assert served.returncode == 2 and "cannot serve it" in served.stderr
    finally:
        with database.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": HEAD})
            conn.execute(text("UPDATE schema_compatibility SET serves_from = '0007_audit_segments'"))
        database.dispose()


# ---------------------------------------------------------------- two releases in a row

NEXT_MIGRATION = '''"""next release: release notes, and a nickname for each principal (expand-only)

Revision ID: {next}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None
contract = False


def upgrade() -> None:
    op.create_table("release_notes", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("note", sa.Text()))
    op.add_column("principals", sa.Column("nickname", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("principals", "nickname")
    op.drop_table("release_notes")
'''


def next_release(tmp_path: Path) -> Path:
    """Release N+1: this tree plus one expand-only migration, in a copy (the product never carries it)."""
    root = tmp_path / "release-next"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "broker", root / "broker", ignore=ignore)
    shutil.copytree(ROOT / "migrations", root / "migrations", ignore=ignore)
    (root / "migrations" / "versions" / f"{NEXT}.py").write_text(NEXT_MIGRATION.format(next=NEXT, head=HEAD))
    return root


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """An empty PostgreSQL database of its own: the releases migrate it from nothing."""
    admin = create_engine(postgres_admin_url(), isolation_level="AUTOCOMMIT")
    name = f"broker_rel_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_admin_url().rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Person:
    """alice, signed in once to the serving release; her session lives across the upgrade and the rollback."""

    def __init__(self, url: str) -> None:
        import pyotp

        self.client = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
        signed_in = login_local(
            self.client, store="breakglass", username="alice", password=PASSWORD, code=pyotp.TOTP(TOTP_SECRET).now()
        )
        assert signed_in.status_code == 303, signed_in.text

    def credentials(self) -> dict[str, str]:
        portal = self.client.get("/", headers={"Accept": "text/html"})
        assert portal.status_code == 200 and 'data-role="readonly"' in portal.text
        page = self.client.post(
            "/credentials", data={"role": "readonly", "csrf": csrf_from(portal.text)}, headers={"Accept": "text/html"}
        )
        assert page.status_code == 200, page.text
        return env_credentials(page.text)


def exchange(url: str, cluster: TestIssuer) -> str:
    data = {
        "grant_type": GRANT,
        "subject_token": cluster.token(audience="broker"),
        "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
        "audience": PAYMENTS,
    }
    response = httpx.post(f"{url}/oauth2/token", data=data, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def verifies(url: str, token: str) -> dict[str, Any]:
    jwks = httpx.get(f"{url}/jwks.json", timeout=30).json()
    return dict(jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES256"]).claims)


def columns(db_url: str, table: str) -> set[str]:
    database = Database(db_url)
    try:
        inspector = inspect(database.engine)
        return {c["name"] for c in inspector.get_columns(table)} if inspector.has_table(table) else set()
    finally:
        database.dispose()


def test_upgrade_and_rollback_across_two_releases(tmp_path: Path, fresh_postgres: str, sts_endpoint: str) -> None:
    db_url = fresh_postgres
    this, following = ROOT, next_release(tmp_path)
    cluster = TestIssuer("https://k8s.releases.test")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config_path = write_config(
        tmp_path / "broker.yaml",
        base_config(
            db_url,
            sts_endpoint,
            public_url=url,
            identity_stores=[local_store()],
            oauth={
                "workload_issuers": [
                    {"name": "k8s", "issuer": cluster.issuer, "jwks": cluster.jwks(), "audiences": ["broker"]}
                ],
                "audiences": [{"audience": PAYMENTS, "grant": [{"stores": ["k8s"]}]}],
            },
        ),
    )
    config = str(config_path)
    assert yaml.safe_load(config_path.read_text())["database_url"] == db_url
    assert NEXT in ok(release(following, "db", "history")) and NEXT not in ok(release(this, "db", "history"))

    assert f"Database at revision {HEAD}." in ok(release(this, "db", "upgrade", "-c", config))
    with BrokerProcess(config_path, port=port):
        alice = Person(url)
        assert alice.credentials()["AWS_ACCESS_KEY_ID"]
        token = exchange(url, cluster)
        assert verifies(url, token)["aud"] == PAYMENTS

        # "Upgrading", step 1: the backup.
        dump = tmp_path / "broker-before-upgrade.dump"
        plain_url = db_url.replace("postgresql+psycopg://", "postgresql://")
        subprocess.run(["pg_dump", "--format=custom", f"--file={dump}", plain_url], check=True, timeout=120)
        assert dump.stat().st_size > 0
        # Step 2, with release N+1.
        current = ok(release(following, "db", "current", "-c", config))
        assert f"Database at revision {HEAD}." in current and "Behind this release: run `broker db upgrade`." in current
        assert f"{NEXT:<30} expand" in ok(release(following, "db", "history"))
        # Step 3, with release N+1, while release N serves.
        assert f"Database at revision {NEXT}." in ok(release(following, "db", "upgrade", "-c", config))
        assert "nickname" in columns(db_url, "principals")

        # Release N keeps serving the expanded schema: the same session, new credentials, new and old tokens.
        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200 and "rolling upgrade in progress" in ready.text
        assert alice.credentials()["AWS_ACCESS_KEY_ID"]
        second = exchange(url, cluster)
        assert verifies(url, token)["jti"] != verifies(url, second)["jti"]
        # Release N's own migration Job: a clear message, nothing changed, exit 0 (it serves this schema).
        behind = release(this, "db", "upgrade", "-c", config)
        assert behind.returncode == 0 and "Traceback" not in behind.stderr
        assert f"The database is at revision {NEXT}, which this release does not know" in behind.stderr
        assert f"This release's newest revision is {HEAD}." in behind.stderr
        assert f"run the newer release's `broker db downgrade --to {HEAD}`" in behind.stderr
        # Step 5, with release N+1 (and release N agrees about the trail).
        assert "Up to date." in ok(release(following, "db", "current", "-c", config))
        assert "Audit chain intact" in ok(release(following, "audit", "verify", "-c", config))
        assert "Audit chain intact" in ok(release(this, "audit", "verify", "-c", config))

        # "Rolling back a release", step 1 with release N: its newest revision.
        assert f"This release's newest revision: {HEAD}." in ok(release(this, "db", "current", "-c", config))
        # Step 2 with release N+1.
        assert f"Database at revision {HEAD}." in ok(release(following, "db", "downgrade", "--to", HEAD, "-c", config))
        assert "nickname" not in columns(db_url, "principals") and not columns(db_url, "release_notes")
        # Step 3 with release N.
        assert "Up to date." in ok(release(this, "db", "current", "-c", config))
        assert f"Database at revision {HEAD}." in ok(release(this, "db", "upgrade", "-c", config))
        assert "Audit chain intact" in ok(release(this, "audit", "verify", "-c", config))

        ready = httpx.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 200 and ready.json()["detail"] == "ok"
        assert alice.credentials()["AWS_ACCESS_KEY_ID"]
        assert verifies(url, exchange(url, cluster))["aud"] == PAYMENTS
        alice.client.close()
    assert "Audit chain intact" in ok(release(this, "audit", "verify", "-c", config))
