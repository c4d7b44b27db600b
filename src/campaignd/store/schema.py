"""Tables. The only place that declares the schema; migrations are checked against it."""

from __future__ import annotations

import sqlalchemy as sa

from campaignd.store.db import UTCDateTime

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants a BIGINT identity.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

campaigns = sa.Table(
    "campaigns",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("audience", sa.JSON, nullable=False),
    sa.Column("time_zone", sa.String(64), nullable=False),
    sa.Column("guard", sa.JSON, nullable=False),
    sa.Column("attestation", sa.JSON),
    sa.Column("archived", sa.Boolean, nullable=False),
    # Derived from the channels' states by lifecycle.derive_campaign_state, kept in step in the
    # same transaction as any channel change, so that lists can filter on it.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    sa.Index("ix_campaigns_create_time_id", "create_time", "id"),
    sa.Index("ix_campaigns_state", "state"),
)

channels = sa.Table(
    "channels",
    metadata,
    sa.Column(
        "campaign_id", sa.String(63), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("channel_id", sa.String(63), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("type", sa.String(63), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("content", sa.JSON, nullable=False),
    sa.Column("transports", sa.JSON, nullable=False),
    sa.Column("rate_limit", sa.Float, nullable=False),
    sa.Column("schedule_time", UTCDateTime),
    sa.Column("send_window", sa.JSON),
    sa.Column("error", sa.JSON),
    sa.Column("remarketing", sa.JSON),
    sa.Column("state_time", UTCDateTime, nullable=False),
    sa.Index("ix_channels_state_schedule_time", "state", "schedule_time"),
)

campaign_events = sa.Table(
    "campaign_events",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column(
        "campaign_id", sa.String(63), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("channel_id", sa.String(63), nullable=False),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("from_state", sa.String(16), nullable=False),
    sa.Column("to_state", sa.String(16), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("cause", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("time", UTCDateTime, nullable=False),
    sa.Column("request_id", sa.String(100), nullable=False),
    sa.Index("ix_campaign_events_campaign_id_id", "campaign_id", "id"),
)

# Results of calls that carried a request_id, so that a repeat returns the first result.
api_requests = sa.Table(
    "api_requests",
    metadata,
    sa.Column("method", sa.String(100), primary_key=True),
    sa.Column("request_id", sa.String(100), primary_key=True),
    sa.Column("response", sa.LargeBinary, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
)
