"""The schema's revisions: move the database to one, say where it is, and whether this release can serve it.

Revision ids (``0001``, ``0003_mfa_factors``) and file names (``0001_initial_schema``) differ for the oldest
revisions; every command takes either, or ``head``.

Expand and contract (docs/operations.md, "Writing migrations"): a migration module that only adds (tables,
nullable columns, indexes) says ``contract = False``; one without that marker is a *contract* migration, which
code older than it cannot serve. An older release cannot read a newer release's migration modules, so the
release that migrates writes the answer into the database: after every upgrade or downgrade,
``schema_compatibility.serves_from`` is the newest contract revision at or below the database's revision. An
older release serves a newer schema when it knows ``serves_from`` (its own code is at least that new), and
refuses it otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from alembic import command
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, delete, insert, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from broker.errors import SchemaMismatch, ServiceUnavailable
from broker.store.db import Database, alembic_config, make_engine
from broker.store.models import SchemaCompatibility

HEAD = "heads"
BASE = "base"


@dataclass(frozen=True)
class Revision:
    """One migration: its Alembic id, its file name, and whether code older than it can serve the result."""

    id: str
    name: str
    contract: bool
    down: tuple[str, ...]

    @property
    def label(self) -> str:
        return self.id if self.id == self.name else f"{self.id} ({self.name})"


@dataclass(frozen=True)
class SchemaStatus:
    """Where the database is, against what this release's migrations know."""

    current: tuple[str, ...]
    heads: tuple[str, ...]
    known: frozenset[str]
    # The newest contract revision at or below the database's revision, as the migrating release recorded it.
    serves_from: str | None

    @property
    def unknown(self) -> tuple[str, ...]:
        return tuple(r for r in self.current if r not in self.known)

    @property
    def ahead(self) -> bool:
        """A newer release migrated the database: this release does not know its revision."""
        return bool(self.unknown)

    @property
    def at_head(self) -> bool:
        return set(self.current) == set(self.heads)

    @property
    def servable(self) -> bool:
        """This release's code can serve the schema: at its head, or newer by expand-only migrations."""
        if self.at_head:
            return True
        return self.ahead and self.serves_from is not None and self.serves_from in self.known


@cache
def _scripts() -> ScriptDirectory:
    """This release's migration scripts, loaded once per process (/readyz asks often)."""
    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def _revision(script: Script) -> Revision:
    down = script.down_revision
    downs = () if down is None else (down,) if isinstance(down, str) else tuple(down)
    return Revision(
        id=script.revision,
        name=Path(script.path).stem,
        contract=getattr(script.module, "contract", True) is not False,
        down=downs,
    )


def history() -> list[Revision]:
    """Every revision of this release, oldest first."""
    return [_revision(s) for s in reversed(list(_scripts().walk_revisions()))]


def label(revision: str) -> str:
    """``0001 (0001_initial_schema)`` for a revision of this release; the bare id for one it does not know."""
    for known in history():
        if known.id == revision:
            return known.label
    return revision


def resolve(target: str, *, allow_base: bool = False) -> str:
    """The Alembic id for ``target``: a revision id, a file name, or ``head``."""
    if target in ("head", "heads"):
        return HEAD
    if allow_base and target == BASE:
        return BASE
    for revision in history():
        if target in (revision.id, revision.name):
            return revision.id
    newest = ", ".join(label(h) for h in head_revisions())
    raise SchemaMismatch(
        reason="schema_unknown_target",
        message=f"This release has no revision {target!r}. Use a revision id or file name from `broker db history` "
        f"(newest here: {newest}), or `head`.",
    )


def head_revisions() -> tuple[str, ...]:
    return tuple(sorted(_scripts().get_heads()))


def _serves_from(connection: Connection) -> str | None:
    if not inspect(connection).has_table(SchemaCompatibility.__tablename__):
        return None
    return connection.execute(select(SchemaCompatibility.serves_from)).scalar_one_or_none()


def status_of(connection: Connection) -> SchemaStatus:
    current = tuple(sorted(MigrationContext.configure(connection).get_current_heads()))
    return SchemaStatus(
        current=current,
        heads=head_revisions(),
        known=frozenset(r.id for r in history()),
        serves_from=_serves_from(connection),
    )


def status(url: str) -> SchemaStatus:
    """Where the database at ``url`` is; ServiceUnavailable when it cannot be reached."""
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            return status_of(connection)
    except SQLAlchemyError as exc:
        kind = type(getattr(exc, "orig", None) or exc).__name__
        raise ServiceUnavailable(f"The database cannot be reached ({kind}).", reason="database_unavailable") from None
    finally:
        engine.dispose()


def record_compatibility(connection: Connection, scripts: ScriptDirectory) -> None:
    """Write ``serves_from`` for the revision the database is now at (called by migrations/env.py).

    Runs in the migration's own transaction, with the migrating release's scripts: only that release knows
    which of the revisions it applied were contract migrations.
    """
    if not inspect(connection).has_table(SchemaCompatibility.__tablename__):
        return  # below the revision that creates the table
    current = MigrationContext.configure(connection).get_current_heads()
    serves_from = None
    for script in scripts.iterate_revisions(current, BASE):
        if _revision(script).contract:
            serves_from = script.revision
            break
    connection.execute(delete(SchemaCompatibility))
    connection.execute(insert(SchemaCompatibility).values(id=1, serves_from=serves_from))


def ahead_message(state: SchemaStatus) -> str:
    """What an operator reads when a newer release migrated the database."""
    newest = ", ".join(label(h) for h in state.heads)
    text = (
        f"The database is at revision {', '.join(state.unknown)}, which this release does not know: a newer "
        f"release migrated it. This release's newest revision is {newest}."
    )
    heads = " ".join(state.heads)
    if state.servable:
        return (
            f"{text} The migrations after {state.serves_from} only expanded the schema, so this release serves "
            f"it as it is: nothing to do. To take the schema back, run the newer release's "
            f"`broker db downgrade --to {heads}`."
        )
    needs = f" (it needs code that knows {state.serves_from})" if state.serves_from else ""
    return (
        f"{text} The newer release contracted the schema, so this release cannot serve it{needs}. Either run "
        f"the newer release, or downgrade with the newer release's `broker db downgrade --to {heads}` (where "
        "it says a downgrade is impossible, restore the backup taken before the upgrade)."
    )


def _is_ancestor(older: str, newer: tuple[str, ...]) -> bool:
    """Whether revision ``older`` is at or below ``newer`` in this release's chain."""
    if older == BASE:
        return True
    return any(s.revision == older for s in _scripts().iterate_revisions(newer, BASE))


def upgrade(url: str, *, to: str = "head") -> SchemaStatus:
    """Apply migrations up to ``to`` (safe to repeat). Refuses a database a newer release migrated."""
    target = resolve(to)
    before = status(url)
    if before.ahead:
        raise SchemaMismatch(
            ahead_message(before), reason="schema_ahead_servable" if before.servable else "schema_ahead"
        )
    if target != HEAD and before.current and not _is_ancestor(before.current[0], (target,)):
        at = ", ".join(label(r) for r in before.current)
        raise SchemaMismatch(
            reason="schema_wrong_direction",
            message=f"The database is at {at}, past {label(target)}: `broker db upgrade` only moves forward. "
            f"Use `broker db downgrade --to {target}`.",
        )
    try:
        command.upgrade(alembic_config(url), target)
    except CommandError as exc:
        raise SchemaMismatch(f"Cannot upgrade to {label(target)}: {exc}", reason="schema_upgrade_failed") from None
    return status(url)


def downgrade(url: str, *, to: str) -> SchemaStatus:
    """Undo migrations down to ``to``; where one cannot be undone, change nothing and say so."""
    target = resolve(to, allow_base=True)
    before = status(url)
    if before.ahead:
        raise SchemaMismatch(ahead_message(before).replace("nothing to do. ", ""), reason="schema_ahead")
    at = ", ".join(label(r) for r in before.current) or BASE
    if target == HEAD or not _is_ancestor(target, before.current):
        raise SchemaMismatch(
            reason="schema_wrong_direction",
            message=f"The database is at {at}, not past {label(target)}: "
            f"use `broker db upgrade --to {to}` to move forward.",
        )
    try:
        command.downgrade(alembic_config(url), target)
    except (RuntimeError, NotImplementedError, CommandError) as exc:
        # A migration that cannot be undone raises; the downgrade runs in one transaction, so nothing moved.
        after = ", ".join(label(r) for r in status(url).current) or BASE
        raise SchemaMismatch(
            f"Cannot downgrade to {label(target)}: {exc} The database is still at {after}.",
            reason="schema_irreversible",
        ) from None
    return status(url)


def readiness(connection: Connection) -> tuple[bool, str]:
    """Whether this release serves the schema (``/readyz``): at head, or ahead by expand-only migrations."""
    state = status_of(connection)
    if state.at_head:
        return True, "ok"
    if state.ahead:
        if state.servable:
            return True, (
                f"schema {list(state.unknown)} is newer than this release and only expanded since "
                f"{state.serves_from}: rolling upgrade in progress"
            )
        return False, (
            f"schema {list(state.unknown)} was contracted past this release: run the newer release, or "
            f"`broker db downgrade --to {' '.join(state.heads)}` with it"
        )
    return False, f"schema at {list(state.current)}, migrations at {list(state.heads)}: run `broker db upgrade`"


def is_ready(db: Database) -> tuple[bool, str]:
    """Readiness: the database answers and this release serves its schema (``broker.store.migrations``).

    During a rolling upgrade the migration Job runs first, so the old release sees a revision it does not know:
    it stays ready when the newer migrations only expanded the schema, rather than take every old replica out
    of the load balancer, and is not ready once they contracted it.
    """
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            return readiness(conn)
    except SQLAlchemyError:
        return False, "database unreachable"
