"""Secret references (env:NAME, file:/path): the root secret_key and the database URL, which carries a password."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, inspect, text

from broker.app import create_app
from broker.settings import display_database_url, load_settings
from tests.conftest import postgres_admin_url
from tests.support.config_files import GOOD_SECRET, good, problems, run_cli, write
from tests.support.processes import LiveServer

DB_PASSWORD = "db-password-that-must-not-be-printed"


def test_placeholder_secret_is_fine_in_dev_mode(tmp_path: Path) -> None:
    data = good() | {"mode": "dev", "secret_key": "dev-only-placeholder"}
    assert load_settings(write(tmp_path, data)).dev


def test_short_secret_refused_outside_dev(tmp_path: Path) -> None:
    assert "at least 32" in problems(tmp_path, good() | {"secret_key": "x" * 10})["secret_key"]


def test_secret_from_environment_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_BROKER_KEY", GOOD_SECRET)
    loaded = load_settings(write(tmp_path, good() | {"secret_key": "env:MY_BROKER_KEY"}))
    assert loaded.secret_key.get_secret_value() == GOOD_SECRET
    secret_file = tmp_path / "key"
    secret_file.write_text(GOOD_SECRET + "\n")
    loaded = load_settings(write(tmp_path, good() | {"secret_key": f"file:{secret_file}"}))
    assert loaded.secret_key.get_secret_value() == GOOD_SECRET
    found = problems(tmp_path, good() | {"secret_key": "env:NOT_SET_ANYWHERE"})
    assert found["secret_key"] == "environment variable NOT_SET_ANYWHERE is not set"


def test_display_database_url_hides_only_the_password() -> None:
    assert display_database_url("postgresql://broker:p@ss@db:5432/broker?sslmode=require") == (
        "postgresql://broker:***@db:5432/broker?sslmode=require"
    )
    assert display_database_url("postgresql://broker@db/broker") == "postgresql://broker@db/broker"
    assert display_database_url("sqlite:///var/broker.db") == "sqlite:///var/broker.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no schema yet, its URL carrying a password (PostgreSQL's trust login ignores it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    admin_url = postgres_admin_url()
    name = f"broker_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    server = admin_url.rsplit("/", 1)[0].replace("postgres@", f"postgres:{DB_PASSWORD}@", 1)
    try:
        yield f"{server}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("reference", ["env", "file"])
def test_database_url_reference_is_resolved_for_config_check_and_db_upgrade(
    tmp_path: Path, empty_database_url: str, reference: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reference == "env":
        monkeypatch.setenv("BROKER_TEST_DB_URL", empty_database_url)
        value = "env:BROKER_TEST_DB_URL"
    else:
        (tmp_path / "database-url").write_text(empty_database_url + "\n")
        value = f"file:{tmp_path / 'database-url'}"
    config = write(tmp_path, good() | {"database_url": value})
    checked = run_cli("config", "check", str(config))
    assert checked.returncode == 0, checked.stderr
    upgraded = run_cli("db", "upgrade", "-c", str(config))
    assert upgraded.returncode == 0, upgraded.stderr
    assert "Database at revision" in upgraded.stdout
    assert {"alembic_version", "audit_events"} <= _tables(empty_database_url)
    for output in (checked, upgraded):
        assert DB_PASSWORD not in output.stdout + output.stderr
    loaded = load_settings(config)
    assert loaded.database_url == empty_database_url
    assert DB_PASSWORD not in repr(loaded)
    # The app (what `broker serve` runs in each worker) reaches the same database through the reference.
    with LiveServer(create_app(loaded)) as server:
        ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200, ready.text


def test_database_url_from_a_missing_variable_or_file_is_refused(tmp_path: Path) -> None:
    missing_env = write(tmp_path, good() | {"database_url": "env:BROKER_TEST_NO_SUCH_DB_URL"}, "env.yaml")
    missing_file = write(tmp_path, good() | {"database_url": f"file:{tmp_path / 'absent'}"}, "file.yaml")
    for command in (("config", "check", str(missing_env)), ("db", "upgrade", "-c", str(missing_env))):
        refused = run_cli(*command)
        assert refused.returncode == 2
        assert "  database_url: environment variable BROKER_TEST_NO_SUCH_DB_URL is not set" in refused.stderr
        assert "Traceback" not in refused.stderr
    refused = run_cli("config", "check", str(missing_file))
    assert refused.returncode == 2
    assert f"  database_url: cannot read secret file {tmp_path / 'absent'}: No such file or directory" in (
        refused.stderr
    )


def test_database_url_reference_in_the_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MY_DATABASE_URL", url)
    monkeypatch.setenv("BROKER_DATABASE_URL", "env:MY_DATABASE_URL")
    assert load_settings(write(tmp_path, good())).database_url == url


def test_audit_verify_database_url_option_takes_a_reference(tmp_path: Path) -> None:
    key = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "ed25519"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "anchor.pem").write_text(key)
    public = subprocess.run(
        ["openssl", "pkey", "-pubout"], input=key, capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "anchor.pub.pem").write_text(public)
    refused = run_cli(
        "audit", "verify", "--digests", str(tmp_path), "--public-key", str(tmp_path / "anchor.pub.pem"),
        "--database-url", "env:BROKER_TEST_NO_SUCH_DB_URL",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--database-url: environment variable BROKER_TEST_NO_SUCH_DB_URL is not set." in refused.stderr
    assert "Traceback" not in refused.stderr
