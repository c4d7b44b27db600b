"""campaigns, channels, history and request ids

Revision ID: 0001
Revises:
Create Date: 2026-11-24 00:00:27.386660
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import campaignd.store.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "api_requests",
        sa.Column("method", sa.String(length=100), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.Column("response", sa.LargeBinary(), nullable=False),
        sa.Column("create_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("method", "request_id", name=op.f("pk_api_requests")),
    )
    op.create_table(
        "campaigns",
        sa.Column("id", sa.String(length=63), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("audience", sa.JSON(), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("guard", sa.JSON(), nullable=False),
        sa.Column("attestation", sa.JSON(), nullable=True),
        sa.Column("archived", sa.Boolean(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("create_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("update_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaigns")),
    )
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.create_index("ix_campaigns_create_time_id", ["create_time", "id"], unique=False)
        batch_op.create_index("ix_campaigns_state", ["state"], unique=False)

    op.create_table(
        "campaign_events",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("campaign_id", sa.String(length=63), nullable=False),
        sa.Column("channel_id", sa.String(length=63), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("cause", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("time", campaignd.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("request_id", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_campaign_events_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_campaign_events")),
    )
    with op.batch_alter_table("campaign_events", schema=None) as batch_op:
        batch_op.create_index("ix_campaign_events_campaign_id_id", ["campaign_id", "id"], unique=False)

    op.create_table(
        "channels",
        sa.Column("campaign_id", sa.String(length=63), nullable=False),
        sa.Column("channel_id", sa.String(length=63), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=63), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("content", sa.JSON(), nullable=False),
        sa.Column("transports", sa.JSON(), nullable=False),
        sa.Column("rate_limit", sa.Float(), nullable=False),
        sa.Column("schedule_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("send_window", sa.JSON(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("remarketing", sa.JSON(), nullable=True),
        sa.Column("state_time", campaignd.store.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["campaign_id"],
            ["campaigns.id"],
            name=op.f("fk_channels_campaign_id_campaigns"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("campaign_id", "channel_id", name=op.f("pk_channels")),
    )
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.create_index("ix_channels_state_schedule_time", ["state", "schedule_time"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("channels", schema=None) as batch_op:
        batch_op.drop_index("ix_channels_state_schedule_time")

    op.drop_table("channels")
    with op.batch_alter_table("campaign_events", schema=None) as batch_op:
        batch_op.drop_index("ix_campaign_events_campaign_id_id")

    op.drop_table("campaign_events")
    with op.batch_alter_table("campaigns", schema=None) as batch_op:
        batch_op.drop_index("ix_campaigns_state")
        batch_op.drop_index("ix_campaigns_create_time_id")

    op.drop_table("campaigns")
    op.drop_table("api_requests")
