"""Alembic environment: runs migrations on the engine campaignd hands it."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Engine

from campaignd.store.schema import metadata

# Any number takes the lock; it only has to be the same in every campaignd process.
_MIGRATION_LOCK = 0x63616D70


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
            if connection.dialect.name == "postgresql":
                # Several daemons may start at once with migrate_on_start; one migrates, the rest wait.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
            context.run_migrations()


run_migrations_online()
