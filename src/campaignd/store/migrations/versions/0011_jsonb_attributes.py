"""contacts' attributes as jsonb on PostgreSQL; one index fewer on messages

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 12:00:00

Segment filters read attributes in place from jsonb; from json, PostgreSQL parsed the text again
at every access (most of the time of excluding a segment at launch). SQLite keeps its JSON text.

The (campaign_id, channel_id, id) index of messages served only listings without a single
state, and cost every launch an index insertion per message; such listings now merge the
(campaign_id, channel_id, state, id) index's ranges, one per state. On PostgreSQL that index no
longer tries to deduplicate its (unique) keys.

On PostgreSQL the conversion rewrites the contacts table and its indexes under an exclusive lock
(docs/operations.md gives the time it takes); downgrading converts back.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATE_INDEX = "ix_messages_campaign_id_channel_id_state_id"
_ID_INDEX = "ix_messages_campaign_id_channel_id_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE contacts ALTER COLUMN attributes TYPE jsonb USING attributes::jsonb")
        # Its keys end with the id, so deduplication finds nothing to merge (this applies to the
        # pages split from now on; nothing is rebuilt).
        op.execute(f"ALTER INDEX {_STATE_INDEX} SET (deduplicate_items = off)")
    op.drop_index(_ID_INDEX, table_name="messages")


def downgrade() -> None:
    op.create_index(_ID_INDEX, "messages", ["campaign_id", "channel_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"ALTER INDEX {_STATE_INDEX} RESET (deduplicate_items)")
        op.execute("ALTER TABLE contacts ALTER COLUMN attributes TYPE json USING attributes::json")
