"""engine

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 01:01:10.137170
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import campaignd.store.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "channel_counts",
        sa.Column("campaign_id", sa.String(length=63), nullable=False),
        sa.Column("channel_id", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_channel_counts_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "channel_id", "state", name=op.f("pk_channel_counts")),
    )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=100), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expiry", campaignd.store.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("next_attempt_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            "ix_messages_sending_lease_expiry",
            ["lease_expiry"],
            unique=False,
            sqlite_where=sa.text("state = 'sending'"),
            postgresql_where=sa.text("state = 'sending'"),
        )
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_messages_campaign_id_channel_id_id", ["campaign_id", "channel_id", "id"], unique=False
        )
    # Channels launched before this revision already have messages: count them once.
    op.execute(
        "INSERT INTO channel_counts (campaign_id, channel_id, state, n) "
        "SELECT campaign_id, channel_id, state, COUNT(*) FROM messages "
        "GROUP BY campaign_id, channel_id, state"
    )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_campaign_id_channel_id_id")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_sending_lease_expiry")
        batch_op.drop_column("next_attempt_time")
        batch_op.drop_column("lease_expiry")
        batch_op.drop_column("lease_owner")

    op.drop_table("channel_counts")
