"""cluster: the members sharing the database and the leader's lease

Revision ID: 0012
Revises: 0010
Create Date: 2026-12-10 09:00:00

Several daemons on one PostgreSQL database register with a heartbeat lease and elect one
leader; on SQLite the tables stay empty (one daemon is its own leader).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from campaignd.store.db import UTCDateTime

revision: str = "0012"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cluster_members",
        sa.Column("id", sa.String(63), nullable=False),
        sa.Column("owner", sa.String(100), nullable=False),
        sa.Column("hostname", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.String(63), nullable=False),
        sa.Column("sends", sa.Boolean(), nullable=False),
        sa.Column("transports", sa.JSON(), nullable=False),
        sa.Column("join_time", UTCDateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_time", UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_expiry", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cluster_members")),
        sa.UniqueConstraint("owner", name=op.f("uq_cluster_members_owner")),
    )
    op.create_table(
        "cluster_leader",
        sa.Column("name", sa.String(31), nullable=False),
        sa.Column("member", sa.String(63), nullable=False),
        sa.Column("since", UTCDateTime(timezone=True), nullable=False),
        sa.Column("lease_expiry", UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_cluster_leader")),
    )


def downgrade() -> None:
    op.drop_table("cluster_leader")
    op.drop_table("cluster_members")
