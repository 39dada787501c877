"""Shared fixtures. Every storage test runs on SQLite and on PostgreSQL (BROKER_TEST_DATABASE_URL)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from broker.store import db as store_db
from broker.store.db import Database, normalize_url
from tests.support.processes import moto_server

# A server connection; the tests create (and drop) their own database on it.
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SECRET = "test-secret-key-0123456789-abcdefghijklmnop"


def pytest_configure(config: pytest.Config) -> None:
    # The STS emulator accepts any key; these grant nothing anywhere.
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    os.environ.pop("AWS_PROFILE", None)


def postgres_admin_url() -> str:
    return normalize_url(os.environ.get("BROKER_TEST_DATABASE_URL", DEFAULT_PG))


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for this test session, created on the configured server."""
    base = postgres_admin_url()
    name = f"broker_t_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + "/" + name
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


_PG_MIGRATED: set[str] = set()


def _reset_postgres(url: str) -> None:
    if url not in _PG_MIGRATED:
        store_db.upgrade(url)
        _PG_MIGRATED.add(url)
    engine = create_engine(url)
    with engine.begin() as conn:
        tables = (
            conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname='public' "
                    "AND tablename NOT IN ('alembic_version', 'schema_compatibility')"
                )
            )
            .scalars()
            .all()
        )
        if tables:
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: a fresh SQLite file, or the session's PostgreSQL database emptied."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'broker.db'}"
        store_db.upgrade(url)
        return url
    url = request.getfixturevalue("postgres_server_url")
    _reset_postgres(url)
    return url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    database = Database(db_url)
    yield database
    database.dispose()


def _is_resource_tracker(process: Any) -> bool:
    """multiprocessing's resource tracker: started once per interpreter by spawn contexts, it ends with pytest."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except Exception:
        return False


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests() -> Iterator[None]:
    """Every process a test starts is ended by that test (or its fixture), even when it fails. At the end of
    the session any child still running is named, ended, and fails the run."""
    import psutil

    yield
    leftovers = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE and not _is_resource_tracker(p)
    ]
    if not leftovers:
        return
    names = []
    for process in leftovers:
        try:
            names.append(" ".join(process.cmdline()[:4]))
        except psutil.Error:
            names.append(str(process.pid))
    for process in leftovers:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(leftovers, timeout=10)
    pytest.fail("processes left running by the tests: " + "; ".join(names), pytrace=False)


@pytest.fixture(scope="session")
def sts_endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


def base_config(db_url: str, sts_endpoint: str, **overrides: Any) -> dict[str, Any]:
    """A valid production-mode configuration for tests; callers override what they exercise."""
    config: dict[str, Any] = {
        "mode": "production",
        "public_url": "http://127.0.0.1:8000",
        "database_url": db_url,
        "secret_key": SECRET,
        "session": {"cookie_secure": False},
        "aws": {
            "region": "us-east-1",
            "sts_endpoint_url": sts_endpoint,
            "federation_endpoint": None,
            "max_attempts": 1,
        },
        "identity_stores": [],
        "roles": [
            {
                "name": "readonly",
                "role_arn": "arn:aws:iam::123456789012:role/ReadOnly",
                "account_name": "dev",
                "grant": [{"groups": ["engineering"]}],
                "mfa": "mfa",
                "max_duration_seconds": 3600,
                "session_tags": {"Email": "{email}"},
                "transitive_tags": ["Email"],
                "session_policy": {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "s3:List*", "Resource": "*"}],
                },
            },
            {
                "name": "admin",
                "role_arn": "arn:aws:iam::123456789012:role/Admin",
                "grant": [{"groups": ["admins"]}],
                "mfa": "phishing_resistant",
                "max_duration_seconds": 900,
                "allow_admin": True,
                "policy_arns": ["arn:aws:iam::aws:policy/AdministratorAccess"],
            },
        ],
    }
    config.update(overrides)
    return config


@pytest.fixture
def make_config(db_url: str, sts_endpoint: str) -> Callable[..., dict[str, Any]]:
    def make(**overrides: Any) -> dict[str, Any]:
        return base_config(db_url, sts_endpoint, **overrides)

    return make


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """One headless Chromium per test module; each test opens its own context (fresh cookies and storage).

    Module scope, not session: Playwright's sync API keeps an event loop running in this thread while it is
    open, which other modules' own uses of asyncio or Playwright must not find.
    """
    from tests.support.browser import launch_chromium

    with launch_chromium() as browser:
        yield browser


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """A host where botocore's whole credential chain comes up empty (no env, files, container or IMDS)."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
