"""a launch on PostgreSQL: jsonb attributes, addresses in byte order, one messages index fewer

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-10 12:00:00

Segment filters read contacts' attributes in place from jsonb; from json, PostgreSQL parsed the
text again at every access (most of the time of excluding a segment at launch). SQLite keeps its
JSON text.

Email addresses and phone numbers (contacts, suppressions, messages) compare byte by byte on
PostgreSQL (COLLATE "C"), as on SQLite: a launch sorts a million of them and inserts them into the
messages' unique index, and the database's locale cost a collation call per comparison.

The (campaign_id, channel_id, id) index of messages served only listings without a single
state, and cost every launch an index insertion per message; such listings now merge the
(campaign_id, channel_id, state, id) index's ranges, one per state. On PostgreSQL that index no
longer tries to deduplicate its (unique) keys.

On PostgreSQL the upgrade rewrites the contacts table and rebuilds the indexes on addresses, each
table under an exclusive lock (docs/operations.md gives the time it takes); downgrading converts
back.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATE_INDEX = "ix_messages_campaign_id_channel_id_state_id"
_ID_INDEX = "ix_messages_campaign_id_channel_id_id"


def _alter(attributes: str, collation: str) -> None:
    """On PostgreSQL: the contacts' attributes as `attributes` (json or jsonb), and every address
    column in `collation`. One ALTER TABLE per table, so that contacts is rewritten once."""
    op.execute(
        f"ALTER TABLE contacts ALTER COLUMN attributes TYPE {attributes} USING attributes::{attributes}, "
        f'ALTER COLUMN email TYPE varchar(320) COLLATE "{collation}", '
        f'ALTER COLUMN phone TYPE varchar(20) COLLATE "{collation}"'
    )
    for table in ("suppressions", "messages"):
        op.execute(f'ALTER TABLE {table} ALTER COLUMN address TYPE varchar(320) COLLATE "{collation}"')


def upgrade() -> None:
    op.drop_index(_ID_INDEX, table_name="messages")
    if op.get_bind().dialect.name == "postgresql":
        _alter("jsonb", "C")
        # Its keys end with the id, so deduplication finds nothing to merge (this applies to the
        # pages split from now on; nothing is rebuilt).
        op.execute(f"ALTER INDEX {_STATE_INDEX} SET (deduplicate_items = off)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {_STATE_INDEX} RESET (deduplicate_items)")
        _alter("json", "default")
    op.create_index(_ID_INDEX, "messages", ["campaign_id", "channel_id", "id"])
