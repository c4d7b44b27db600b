"""events: engagement and delivery events recorded against messages

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 06:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from campaignd.store.db import UTCDateTime

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_events",
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("campaign_id", sa.String(63), nullable=False),
        sa.Column("channel_id", sa.String(63), nullable=False),
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("url", sa.String(2000), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("create_time", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("event_id", name="pk_message_events"),
    )
    op.create_index(
        "ix_message_events_campaign_id_channel_id_kind",
        "message_events",
        ["campaign_id", "channel_id", "kind"],
    )


def downgrade() -> None:
    op.drop_index("ix_message_events_campaign_id_channel_id_kind", table_name="message_events")
    op.drop_table("message_events")
