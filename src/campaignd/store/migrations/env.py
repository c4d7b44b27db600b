"""Alembic environment: runs migrations on the engine campaignd hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Engine

from campaignd.store.locks import migration_lock
from campaignd.store.schema import metadata


def run_migrations_online() -> None:
    """Migrate inside one transaction, serialised across processes on PostgreSQL."""
    engine: Engine = context.config.attributes["engine"]
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            # Several daemons may start at once with migrate_on_start; one migrates, the rest wait.
            migration_lock(connection)
            context.run_migrations()


run_migrations_online()
