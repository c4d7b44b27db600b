"""Schema migrations from an empty database, on SQLite and on PostgreSQL."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from campaignd.store import migrate
from campaignd.store.db import create_engine
from campaignd.store.schema import metadata
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


def test_the_cluster_migration_upgrades_and_downgrades(database_url: str) -> None:
    """0012 adds the cluster's tables; downgraded to the revision before, they are gone and the
    rest stays; upgraded again, they are back."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    config = Config()
    config.set_main_option("script_location", str(migrate.MIGRATIONS))
    config.attributes["engine"] = engine
    before = ScriptDirectory.from_config(config).get_revision("0012").down_revision
    assert isinstance(before, str)
    cluster_tables = {"cluster_members", "cluster_leader"}
    try:
        migrate.upgrade(engine)
        assert cluster_tables <= set(sa.inspect(engine).get_table_names())
        command.downgrade(config, before)
        tables = set(sa.inspect(engine).get_table_names())
        assert not cluster_tables & tables
        assert {"messages", "campaigns"} <= tables
        assert migrate.current_revision(engine) == before
        migrate.upgrade(engine)
        assert cluster_tables <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
