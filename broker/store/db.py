"""Engine, transactions and migrations. Nothing here runs at import time."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session as Session  # the type the rest of the broker annotates sessions with
from sqlalchemy.orm import sessionmaker

from broker.errors import ServiceUnavailable


def normalize_url(url: str) -> str:
    """Accept plain ``postgresql://`` URLs and use the psycopg 3 driver for them."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _sqlite_pragmas(engine: Engine) -> None:
    # WAL lets readers run beside the writer; BEGIN IMMEDIATE takes the write lock up front so two
    # processes appending to the audit chain queue on busy_timeout instead of failing on lock upgrade.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})
        _sqlite_pragmas(engine)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10, connect_args={"connect_timeout": 5})


class _Open(threading.local):
    """Per thread: how many transactions are open, and what waits for the outermost one to end."""

    depth = 0

    def __init__(self) -> None:
        self.after: list[Callable[[], object]] = []


class Database:
    """The broker's database: an engine, a session factory and a transaction scope."""

    def __init__(self, url: str) -> None:
        self.url = normalize_url(url)
        self.engine = make_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._open = _Open()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction: commit on success, roll back on error. Database faults become 503s.

        Work queued with :meth:`after_transaction` while it is open runs once the outermost transaction of
        this thread has ended, whether it committed or rolled back.
        """
        if self._open.depth:
            # On SQLite the first transaction holds the write lock (BEGIN IMMEDIATE): a second one would wait
            # for it until busy_timeout. Pass the open session down instead.
            raise RuntimeError("a transaction of this database is already open in this thread")
        self._open.depth += 1
        try:
            with self._sessions.begin() as session:
                yield session
        except SQLAlchemyError as exc:
            raise ServiceUnavailable(reason="database_unavailable") from exc
        finally:
            self._open.depth -= 1
            if self._open.depth == 0 and self._open.after:
                queued, self._open.after = self._open.after, []
                # An action that raises (the audit trail is down) replaces the error in flight: fail closed.
                for action in queued:
                    action()

    def time_statements(self, observe: Callable[[float], None]) -> None:
        """Call ``observe(seconds)`` after every statement this database runs (``broker.monitoring``)."""

        @event.listens_for(self.engine, "before_cursor_execute")
        def _before(conn: Any, *_: Any) -> None:
            conn.info["broker.started"] = time.perf_counter()

        @event.listens_for(self.engine, "after_cursor_execute")
        def _after(conn: Any, *_: Any) -> None:
            started = conn.info.pop("broker.started", None)
            if started is not None:
                observe(time.perf_counter() - started)

    def in_transaction(self) -> bool:
        """Whether this thread has a transaction of this database open (a second one would wait on it)."""
        return self._open.depth > 0

    def after_transaction(self, action: Callable[[], object]) -> None:
        """Run ``action`` when this thread's open transaction has ended, or now when none is open.

        On SQLite a second transaction beside an open one waits for its write lock, which is never released
        while this thread waits: work that needs its own transaction (auditing a refusal) queues here.
        """
        if self.in_transaction():
            self._open.after.append(action)
        else:
            action()

    def dispose(self) -> None:
        self.engine.dispose()


def migrations_path() -> Path:
    """The Alembic scripts: ``migrations/`` in a source checkout, ``broker/_migrations`` in a wheel."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package.parent / "migrations", package / "_migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FileNotFoundError("Alembic migrations not found next to the broker package")


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    config.set_main_option("sqlalchemy.url", normalize_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "heads") -> None:
    command.upgrade(alembic_config(url), revision)


def head_revisions() -> set[str]:
    """The newest revision(s); more than one only while parallel branches await their merge revision."""
    return set(ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def existing_schema_problem(url: str) -> str | None:
    """Why operator commands must not use this database: a missing SQLite file or no broker schema, else None.

    Opening a SQLite URL creates the file, so a mistyped path would otherwise become a fresh, empty database.
    """
    url = normalize_url(url)
    if url.startswith("sqlite"):
        path = url.split("///", 1)[1] if "///" in url else ""
        if not path or path == ":memory:":
            return "an in-memory SQLite database holds no broker data"
        if not Path(path).is_file():
            return f"there is no database file at {Path(path).resolve()}"
    engine = make_engine(url)
    try:
        current = current_revisions(engine)
    except SQLAlchemyError as exc:
        return f"the database is unreachable ({type(getattr(exc, 'orig', None) or exc).__name__})"
    finally:
        engine.dispose()
    if not current:
        return "the database has no broker schema yet"
    return None
