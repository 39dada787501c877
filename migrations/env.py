"""Alembic environment: migrates the URL given by ``broker db upgrade`` (via broker.store.db)."""

from __future__ import annotations

from alembic import context

from broker.store.db import make_engine
from broker.store.migrations import record_compatibility
from broker.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = make_engine(url)
    with engine.connect() as connection:
        # One transaction for the whole run on SQLite too (Alembic's default there is one per migration): a
        # downgrade that meets an irreversible migration, or a failed upgrade, leaves the schema where it was.
        context.configure(
            connection=connection, target_metadata=target_metadata, render_as_batch=True, transactional_ddl=True
        )
        with context.begin_transaction():
            context.run_migrations()
            # In the same transaction: which older releases can serve the schema now (expand and contract).
            record_compatibility(connection, context.script)
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
