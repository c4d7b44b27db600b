"""Schema migrations from an empty database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import pathlib
import subprocess
import sys
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from campaignd.audience.filters import parse
from campaignd.store import migrate
from campaignd.store.db import create_engine
from campaignd.store.filters import compile as compile_filter
from campaignd.store.schema import contacts, metadata
from tests.integration.conftest import DaemonFactory


def _config(tmp_path: pathlib.Path, url: str) -> pathlib.Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f'[daemon]\nstate_directory = "{tmp_path}"\n[database]\nurl = "{url}"\n', encoding="utf-8"
    )
    return path


@pytest.mark.slow
def test_migrate_command_builds_the_schema_from_empty(database_url: str, tmp_path: pathlib.Path) -> None:
    """`campaignd migrate` on an empty database reaches head, and a second run changes nothing."""
    config = _config(tmp_path, database_url)
    command = [sys.executable, "-m", "campaignd.daemon", "migrate", "--config", str(config)]
    first = subprocess.run(command, capture_output=True, text=True, check=False)
    assert first.returncode == 0, first.stderr
    assert f"schema: empty -> {migrate.head_revision()}" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, check=False)
    assert second.returncode == 0, second.stderr
    assert f"schema: {migrate.head_revision()} -> {migrate.head_revision()}" in second.stdout


def test_migrated_schema_matches_the_declared_tables(database_url: str) -> None:
    """After migrating, the database has exactly the tables and columns schema.py declares."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, metadata)
        tables = set(sa.inspect(conn).get_table_names())
    engine.dispose()
    assert differences == []
    assert {"campaigns", "channels", "campaign_events", "api_requests", "alembic_version"} <= tables


@pytest.mark.slow
def test_daemon_serves_on_postgresql(daemon_factory: DaemonFactory, pg_url: str) -> None:
    """The daemon migrates a new PostgreSQL database on start and serves."""
    daemon = daemon_factory(f'[database]\nurl = "{pg_url}"\n[log]\nformat = "json"\n').start()
    serving = next(e for e in daemon.log_events() if e["event"] == "serving")
    assert serving["database"] == "postgresql"
    assert daemon.stop() == 0


ATTRIBUTES = {"plan": "pro", "score": 72.5, "tags": ["vip", 3, True], "name": "Zoë", "a": {"b": {"c": None}}}


def test_0011_converts_attributes_and_back_with_their_data(database_url: str) -> None:
    """0011 makes attributes jsonb on PostgreSQL and drops a messages index; downgrading undoes
    both, and the contacts' attributes come through each way unchanged and filterable."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    migrate.upgrade(engine, "0010")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    with engine.begin() as conn:
        conn.execute(
            contacts.insert(),
            [
                {
                    "contact_id": f"c{i}",
                    "attributes": {**ATTRIBUTES, "i": i},
                    "create_time": now,
                    "update_time": now,
                }
                for i in range(3)
            ],
        )

    def state(*, filtered: bool = True) -> tuple[str, bool, dict[str, dict[str, Any]], set[str]]:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            column = next(c for c in inspector.get_columns("contacts") if c["name"] == "attributes")
            indexes = {i["name"]: i for i in inspector.get_indexes("messages")}
            if engine.dialect.name == "postgresql":
                # Deduplication is off exactly when the (campaign, channel, id) index is gone.
                options = indexes["ix_messages_campaign_id_channel_id_state_id"]["dialect_options"]
                assert (options.get("postgresql_with") == {"deduplicate_items": "off"}) != (
                    "ix_messages_campaign_id_channel_id_id" in indexes
                )
            rows = conn.execute(sa.select(contacts.c.contact_id, contacts.c.attributes)).all()
            pro = compile_filter(parse('attributes.plan = "pro" AND attributes.tags:"vip"'), contacts)
            found = set(conn.scalars(sa.select(contacts.c.contact_id).where(pro))) if filtered else set()
        return (
            type(column["type"]).__name__,
            "ix_messages_campaign_id_channel_id_id" in indexes,
            dict(rows),
            found,
        )

    everyone = {"c0", "c1", "c2"}
    stored = {f"c{i}": {**ATTRIBUTES, "i": i} for i in range(3)}
    migrate.upgrade(engine, "0011")
    assert state() == ("JSONB" if engine.dialect.name == "postgresql" else "JSON", False, stored, everyone)
    migrate.downgrade(engine, "0010")
    # Filters are compiled for jsonb on PostgreSQL, so they are not run on the downgraded column.
    assert state(filtered=False) == ("JSON", True, stored, set())
    migrate.upgrade(engine)
    assert state()[2:] == (stored, everyone)
    engine.dispose()
