"""``broker db upgrade|downgrade|current|history``: move the schema to a revision and say where it is.

Thin wiring: the logic, and the expand/contract rule, live in ``broker.store.migrations``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from broker.cli.options import DEFAULT_CONFIG, ConfigOption, err, out

if TYPE_CHECKING:
    from broker.settings import Settings
    from broker.store.migrations import SchemaStatus


def register(db_app: typer.Typer) -> None:
    db_app.command("upgrade")(db_upgrade)
    db_app.command("downgrade")(db_downgrade)
    db_app.command("current")(db_current)
    db_app.command("history")(db_history)


def _say(text: str, *, error: bool = False) -> None:
    # Printed literally: messages quote commands in backticks and revision names with brackets.
    (err if error else out).print(text, markup=False, highlight=False, soft_wrap=True)


def _fail(exc: Exception, code: int = 1) -> typer.Exit:
    from broker.errors import BrokerError

    assert isinstance(exc, BrokerError)
    _say(exc.message, error=True)
    return typer.Exit(code)


def _where(state: SchemaStatus) -> str:
    from broker.store.migrations import label

    return ", ".join(label(r) for r in state.current) or "no broker schema"


def db_upgrade(
    config: ConfigOption = DEFAULT_CONFIG,
    to: Annotated[
        str, typer.Option("--to", help="Revision id or file name (see `broker db history`), or head.")
    ] = "head",
) -> None:
    """Apply migrations up to --to (default: the newest); safe to run repeatedly.

    Against a database a newer release migrated, it changes nothing and says what to do: exit 0 when the newer
    migrations only expanded the schema (this release serves it), 1 when they contracted it.
    """
    from broker.cli.options import load_config as _load
    from broker.errors import BrokerError, SchemaMismatch
    from broker.store import migrations

    settings = _load(config)
    try:
        state = migrations.upgrade(settings.database_url, to=to)
    except SchemaMismatch as exc:
        raise _fail(exc, 0 if exc.reason == "schema_ahead_servable" else 1) from None
    except BrokerError as exc:
        raise _fail(exc, 2) from None
    _say(f"Database at revision {_where(state)}.")


def db_downgrade(
    to: Annotated[str, typer.Option("--to", help="Revision id or file name to go back to (`broker db history`).")],
    config: ConfigOption = DEFAULT_CONFIG,
) -> None:
    """Undo migrations down to --to, with the release that applied them (take a backup first).

    Where a migration cannot be undone it says so, changes nothing and exits 1: restore the backup instead.
    """
    from broker.cli.options import existing_database as _existing_database
    from broker.cli.options import load_config as _load
    from broker.errors import BrokerError, SchemaMismatch
    from broker.store import migrations

    settings = _load(config)
    url = _existing_database(settings, config)
    try:
        state = migrations.downgrade(url, to=to)
    except SchemaMismatch as exc:
        raise _fail(exc) from None
    except BrokerError as exc:
        raise _fail(exc, 2) from None
    _say(f"Database at revision {_where(state)}.")


def db_current(config: ConfigOption = DEFAULT_CONFIG) -> None:
    """Print the database's revision (id and file name) against this release's newest, and what to do."""
    from broker.cli.options import existing_database as _existing_database
    from broker.cli.options import load_config as _load
    from broker.errors import BrokerError
    from broker.store import migrations

    settings = _load(config)
    try:
        state = migrations.status(_existing_database(settings, config))
    except BrokerError as exc:
        raise _fail(exc, 2) from None
    newest = ", ".join(migrations.label(h) for h in state.heads)
    _say(f"Database at revision {_where(state)}.")
    _say(f"This release's newest revision: {newest}.")
    if state.at_head:
        _say("Up to date.")
    elif state.ahead:
        _say(migrations.ahead_message(state))
    else:
        _say("Behind this release: run `broker db upgrade`.")
    if state.serves_from:
        _say(f"Releases that know {migrations.label(state.serves_from)} or newer can serve this schema.")


def db_history() -> None:
    """List this release's revisions, oldest first: id, file name, and expand or contract."""
    from broker.store import migrations

    for revision in migrations.history():
        kind = "contract" if revision.contract else "expand"
        name = "" if revision.name == revision.id else f"  (file {revision.name}.py)"
        _say(f"{revision.id:<30} {kind:<8}{name}".rstrip())


def check_schema_before_serving(settings: Settings) -> None:
    """``broker serve``: refuse (exit 2) a schema a newer release contracted; warn when serving a newer one.

    A database that cannot be reached, or one behind the code, does not stop the server: /readyz reports it
    until it recovers or ``broker db upgrade`` has run.
    """
    from broker import logs
    from broker.errors import BrokerError
    from broker.store import migrations

    try:
        state = migrations.status(settings.database_url)
    except BrokerError:
        return
    if not state.ahead:
        return
    if not state.servable:
        _say(migrations.ahead_message(state), error=True)
        raise typer.Exit(2)
    logs.get_logger("broker.serve").warning(
        "serving a newer schema", revision=list(state.unknown), expand_only_since=state.serves_from
    )
