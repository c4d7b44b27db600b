"""Tables. The only place that declares the schema; migrations are checked against it."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

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


# Email addresses and phone numbers compare and sort byte by byte on both databases, as SQLite's
# BINARY does; on PostgreSQL that is COLLATE "C". A launch sorts and indexes a million addresses,
# and the database's locale would cost a collation call per comparison, with no abbreviated keys in
# sorts (migration 0013). Every address column is of these types, so comparisons between them agree.
Address = sa.String(320).with_variant(sa.String(320, collation="C"), "postgresql")
Phone = sa.String(20).with_variant(sa.String(20, collation="C"), "postgresql")

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
    # How the audience resolved at launch: targeted, excluded, suppressed, skipped, queued.
    sa.Column("audience_counts", sa.JSON),
    # What a crash does to a message whose send had started unrecorded: "resend", or NULL (skip).
    sa.Column("ambiguous_sends", sa.String(16)),
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

contacts = sa.Table(
    "contacts",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("contact_id", sa.String(63), nullable=False, unique=True),
    # Lower-cased; unique when set (NULLs do not collide on either backend).
    sa.Column("email", Address, unique=True),
    sa.Column("phone", Phone, index=True),
    sa.Column("time_zone", sa.String(64)),
    # jsonb on PostgreSQL: segment filters read it in place, where json text would be parsed
    # again at every access (migration 0013). SQLite keeps JSON text.
    sa.Column("attributes", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    # SQLite would otherwise reuse the highest row id after a delete; other rows point at these ids.
    sqlite_autoincrement=True,
)

contact_lists = sa.Table(
    "contact_lists",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
)

list_members = sa.Table(
    "list_members",
    metadata,
    sa.Column(
        "list_id", sa.String(63), sa.ForeignKey("contact_lists.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("contact", sa.BigInteger, sa.ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_list_members_contact", "contact"),
)

segments = sa.Table(
    "segments",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    sa.Column("display_name", sa.String(200), nullable=False),
    sa.Column("filter", sa.Text, nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
)

suppressions = sa.Table(
    "suppressions",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("address", Address, nullable=False),
    # "" means every channel type; a NULL would defeat the unique constraint.
    sa.Column("channel_type", sa.String(63), nullable=False),
    sa.Column("reason", sa.String(16), nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.UniqueConstraint("address", "channel_type"),
    sqlite_autoincrement=True,
)

# One recipient on one channel, frozen at launch: a launch writes one row per address of the
# channel (it groups the audience by address), and the unique index below keeps it so for every
# message that has left QUEUED.
messages = sa.Table(
    "messages",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    # No foreign key: it would check every row frozen at launch, and deleting a campaign deletes
    # its messages first, in the transaction that holds the campaign (migration 0005).
    sa.Column("campaign_id", sa.String(63), nullable=False),
    sa.Column("channel_id", sa.String(63), nullable=False),
    # The contact's row id; kept as a plain number so deleting a contact keeps its messages.
    sa.Column("contact", sa.BigInteger),
    sa.Column("address", Address, nullable=False),
    sa.Column("time_zone", sa.String(64)),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("transport", sa.String(63)),
    sa.Column("provider_id", sa.String(200)),
    sa.Column("last_error", sa.Text),
    sa.Column("reason", sa.String(63)),
    sa.Column("outcome", sa.String(63)),
    # How many provider messages it took (an SMS of 3 parts: 3); NULL before it was sent: one.
    sa.Column("parts", sa.SmallInteger),
    # Seconds an answered call lasted (voice).
    sa.Column("talk_time", sa.Float),
    # Who is sending it (a daemon's owner id) and until when, unless the owner renews the lease.
    sa.Column("lease_owner", sa.String(100)),
    sa.Column("lease_expiry", UTCDateTime),
    # When a RETRYING message may be tried again.
    sa.Column("next_attempt_time", UTCDateTime),
    # True once the lease's owner may have handed the message to the provider (written before the
    # send starts); a lease that expires without it was never sent and goes back to QUEUED.
    sa.Column("started", sa.Boolean),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Column("update_time", UTCDateTime, nullable=False),
    # A channel's messages by address (inbound events, opt-outs). Only those out of QUEUED: a
    # launch writes a million QUEUED rows, and an index entry for each cost a quarter of the
    # launch (migration 0016). Lookups of a QUEUED message by address, which nothing does at a
    # rate, read the channel's QUEUED range of the state index.
    sa.Index(
        "uq_messages_campaign_id_channel_id_address",
        "campaign_id",
        "channel_id",
        "address",
        unique=True,
        sqlite_where=sa.text("state != 'queued'"),
        postgresql_where=sa.text("state <> 'queued'"),
    ),
    # Leases and listings take a channel's messages of one state in id order. A listing of several
    # states merges one such range per state (store.messages.list_messages), so no second
    # (campaign_id, channel_id, id) index slows every launch (migration 0013). Its keys are unique
    # (they end with the id), so PostgreSQL's deduplication would only cost every page split.
    sa.Index(
        "ix_messages_campaign_id_channel_id_state_id",
        "campaign_id",
        "channel_id",
        "state",
        "id",
        postgresql_with={"deduplicate_items": "off"},
    ),
    # Only SENDING rows have leases to sweep; a partial index costs nothing when launches write
    # millions of QUEUED rows.
    sa.Index(
        "ix_messages_sending_lease_expiry",
        "lease_expiry",
        sqlite_where=sa.text("state = 'sending'"),
        postgresql_where=sa.text("state = 'sending'"),
    ),
    sqlite_autoincrement=True,
)

# Messages per state of each channel, kept in step with every message move in the same
# transaction, so that progress never needs a COUNT over the messages.
channel_counts = sa.Table(
    "channel_counts",
    metadata,
    sa.Column(
        "campaign_id", sa.String(63), sa.ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column("channel_id", sa.String(63), primary_key=True),
    sa.Column("state", sa.String(20), primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False),
)

# Inbound events find their message by the provider's id; only sent messages have one.
sa.Index(
    "ix_messages_provider_id",
    messages.c.provider_id,
    sqlite_where=sa.text("provider_id IS NOT NULL"),
    postgresql_where=sa.text("provider_id IS NOT NULL"),
)

# Keys the daemons of one database share, e.g. the one that signs page tokens (a token made by
# one daemon is good on every other). Made by the migration that creates the table.
server_keys = sa.Table(
    "server_keys",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)

# Engagement and delivery events recorded against a message (RecordEvents, the HTTP listener,
# the bounce receiver). The event id makes a repeat change nothing; the rows are what the
# report counts opens, clicks (per link), bounces, complaints and unsubscribes from.
message_events = sa.Table(
    "message_events",
    metadata,
    sa.Column("event_id", sa.String(200), primary_key=True),
    sa.Column("campaign_id", sa.String(63), nullable=False),
    sa.Column("channel_id", sa.String(63), nullable=False),
    sa.Column("message_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("url", sa.String(2000)),
    sa.Column("detail", sa.Text),
    sa.Column("create_time", UTCDateTime, nullable=False),
    sa.Index("ix_message_events_campaign_id_channel_id_kind", "campaign_id", "channel_id", "kind"),
)

# The parts of a sent message in several parts (an SMS) whose receipts are still to come, so
# that a part's receipt finds its message when the transport that sent it no longer knows the
# part (after a restart, or on another cluster member): the message is DELIVERED once every part
# is, FAILED at its first failed part, and its rows go then.
message_parts = sa.Table(
    "message_parts",
    metadata,
    sa.Column("message_id", sa.BigInteger, primary_key=True),
    sa.Column("part_id", sa.String(200), primary_key=True),
    sa.Column("delivered", sa.Boolean, nullable=False),
    sa.Index("ix_message_parts_part_id", "part_id"),
)

# The daemons that share this database (PostgreSQL): each renews its row's lease every
# [cluster] heartbeat_interval, by the database's clock. One whose lease lapsed sends nothing
# (it fences itself first), its message leases are taken over, and it rejoins under a new id.
cluster_members = sa.Table(
    "cluster_members",
    metadata,
    sa.Column("id", sa.String(63), primary_key=True),
    # The owner id written on its message leases: "host:pid:id".
    sa.Column("owner", sa.String(100), nullable=False, unique=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("version", sa.String(63), nullable=False),
    # Whether its engine sends; an API-only daemon has no gates a barrier must wait for.
    sa.Column("sends", sa.Boolean, nullable=False),
    # The transports it is configured with, among which rates and concurrency are shared.
    sa.Column("transports", sa.JSON, nullable=False),
    # The settings every member must share, as it has them (cluster/settings.py); NULL from a
    # member of a version before migration 0014.
    sa.Column("settings", sa.JSON),
    sa.Column("join_time", UTCDateTime, nullable=False),
    sa.Column("heartbeat_time", UTCDateTime, nullable=False),
    sa.Column("lease_expiry", UTCDateTime, nullable=False),
)

# The leader's lease: one row, held by a member that renews it with its heartbeat and taken by
# another once it lapses. The leader runs schedules, activation and the sweeps.
cluster_leader = sa.Table(
    "cluster_leader",
    metadata,
    sa.Column("name", sa.String(31), primary_key=True),
    sa.Column("member", sa.String(63), nullable=False),
    sa.Column("since", UTCDateTime, nullable=False),
    sa.Column("lease_expiry", UTCDateTime, nullable=False),
)
