"""cluster members' settings: what must match on every member, for a member to see a mismatch

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-11 09:00:00

Each member writes the settings every member must share (engine.slots and slot_policy, the
plugins and channel types, each transport's type, rate and concurrency) with its heartbeat; a
member that finds another's differing from its own logs which. A member of an older version
writes none, and is not compared.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("cluster_members") as batch_op:
        batch_op.add_column(sa.Column("settings", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("cluster_members") as batch_op:
        batch_op.drop_column("settings")
