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
from campaignd.store.schema import contacts, messages, metadata, suppressions
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
ADDRESSES = [
    ("contacts", "email"),
    ("contacts", "phone"),
    ("suppressions", "address"),
    ("messages", "address"),
]


def test_0013_converts_and_converts_back_with_the_data(database_url: str) -> None:
    """0013 makes attributes jsonb and addresses byte-ordered on PostgreSQL and drops a messages
    index; downgrading undoes all of it, and the data comes through each way unchanged."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    postgresql = engine.dialect.name == "postgresql"
    migrate.upgrade(engine, "0012")
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    emails = ["a_b@example.org", "ab@example.org", "émile@example.org"]
    with engine.begin() as conn:
        conn.execute(
            contacts.insert(),
            [
                {
                    "contact_id": f"c{i}",
                    "email": email,
                    "phone": f"+1202555010{i}",
                    "attributes": {**ATTRIBUTES, "i": i},
                    "create_time": now,
                    "update_time": now,
                }
                for i, email in enumerate(emails)
            ],
        )
        conn.execute(
            suppressions.insert(),
            [
                {
                    "address": emails[0],
                    "channel_type": "",
                    "reason": "manual",
                    "source": "t",
                    "create_time": now,
                }
            ],
        )
        conn.execute(
            messages.insert(),
            [
                {
                    "campaign_id": "k",
                    "channel_id": "m",
                    "address": email,
                    "state": "queued",
                    "attempts": 0,
                    "create_time": now,
                    "update_time": now,
                }
                for email in emails
            ],
        )

    def state(*, filtered: bool = True) -> dict[str, Any]:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            columns = {
                (table, c["name"]): c["type"]
                for table in ("contacts", "suppressions", "messages")
                for c in inspector.get_columns(table)
            }
            indexes = {i["name"]: i for i in inspector.get_indexes("messages")}
            if postgresql:
                # Deduplication is off exactly when the (campaign, channel, id) index is gone.
                options = indexes["ix_messages_campaign_id_channel_id_state_id"]["dialect_options"]
                assert (options.get("postgresql_with") == {"deduplicate_items": "off"}) != (
                    "ix_messages_campaign_id_channel_id_id" in indexes
                )
            pro = compile_filter(parse('attributes.plan = "pro" AND attributes.tags:"vip"'), contacts)
            return {
                "attributes": type(columns["contacts", "attributes"]).__name__,
                "collations": {column: getattr(columns[column], "collation", None) for column in ADDRESSES},
                "id index": "ix_messages_campaign_id_channel_id_id" in indexes,
                "contacts": {
                    r.contact_id: (r.email, r.phone, r.attributes)
                    for r in conn.execute(sa.select(contacts)).all()
                },
                "suppressed": conn.scalars(sa.select(suppressions.c.address)).all(),
                "messages": sorted(conn.scalars(sa.select(messages.c.address))),
                "matching": set(conn.scalars(sa.select(contacts.c.contact_id).where(pro)))
                if filtered
                else None,
            }

    data = {
        "contacts": {
            f"c{i}": (email, f"+1202555010{i}", {**ATTRIBUTES, "i": i}) for i, email in enumerate(emails)
        },
        "suppressed": [emails[0]],
        "messages": sorted(emails),
    }
    migrate.upgrade(engine, "0013")
    assert state() == {
        "attributes": "JSONB" if postgresql else "JSON",
        "collations": dict.fromkeys(ADDRESSES, "C" if postgresql else None),
        "id index": False,
        **data,
        "matching": {"c0", "c1", "c2"},
    }
    migrate.downgrade(engine, "0012")
    # Filters are compiled for jsonb on PostgreSQL, so they are not run on the downgraded column.
    assert state(filtered=False) == {
        "attributes": "JSON",
        "collations": dict.fromkeys(ADDRESSES),
        "id index": True,
        **data,
        "matching": None,
    }
    migrate.upgrade(engine)
    assert state()["matching"] == {"c0", "c1", "c2"}
    engine.dispose()


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


def test_the_address_index_keeps_the_messages_and_leaves_queued_ones_out(database_url: str) -> None:
    """0016 keeps every message and moves its address uniqueness to a unique index of the
    messages out of QUEUED: two sent messages to one address of a channel are refused, a QUEUED
    one is not in the index. Downgraded, the constraint covers every message again."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    row = {"campaign_id": "c", "channel_id": "mail", "attempts": 0, "create_time": now, "update_time": now}
    try:
        migrate.upgrade(engine, "0015")
        with engine.begin() as conn:
            conn.execute(
                messages.insert(),
                [
                    {**row, "address": "a@example.org", "state": "sent"},
                    {**row, "address": "b@example.org", "state": "queued"},
                ],
            )
        migrate.upgrade(engine)
        with engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one() == 2
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(messages.insert(), {**row, "address": "a@example.org", "state": "failed"})
        indexes = {i["name"]: i for i in sa.inspect(engine).get_indexes("messages")}
        assert indexes["uq_messages_campaign_id_channel_id_address"]["unique"]
        with engine.begin() as conn:  # not in the index while QUEUED (a launch writes none twice)
            extra = conn.execute(
                messages.insert().returning(messages.c.id),
                {**row, "address": "b@example.org", "state": "queued"},
            ).scalar_one()
            conn.execute(messages.delete().where(messages.c.id == extra))
        migrate.downgrade(engine, "0015")
        with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
            conn.execute(messages.insert(), {**row, "address": "b@example.org", "state": "queued"})
        with engine.begin() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(messages)).scalar_one() == 2
    finally:
        engine.dispose()
