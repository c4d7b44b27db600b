"""messages by address: only those that have left QUEUED

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-12 10:00:00

The unique (campaign_id, channel_id, address) constraint of messages becomes a unique index of
the messages out of QUEUED. A launch writes every recipient of a channel as a QUEUED message,
one per address (it groups the audience by address), and an entry in this index for each cost
about a quarter of a 1M-recipient launch. A message enters the index when it is leased; lookups
by address (inbound events, opt-outs) are of messages that were sent.

On PostgreSQL the index is built under a lock that holds writes to messages (docs/operations.md
gives the time it takes); on SQLite the table is copied without the constraint first.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "uq_messages_campaign_id_channel_id_address"
_COLUMNS = ["campaign_id", "channel_id", "address"]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint(_NAME, "messages", type_="unique")
    else:
        with op.batch_alter_table("messages", schema=None) as batch_op:
            batch_op.drop_constraint(_NAME, type_="unique")
    op.create_index(
        _NAME,
        "messages",
        _COLUMNS,
        unique=True,
        sqlite_where=sa.text("state != 'queued'"),
        postgresql_where=sa.text("state <> 'queued'"),
    )


def downgrade() -> None:
    op.drop_index(_NAME, table_name="messages")
    if op.get_bind().dialect.name == "postgresql":
        op.create_unique_constraint(_NAME, "messages", _COLUMNS)
    else:
        with op.batch_alter_table("messages", schema=None) as batch_op:
            batch_op.create_unique_constraint(_NAME, _COLUMNS)
