"""crash recovery: which leased messages had their send started; a channel's choice for those

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable without a default: adding them rewrites no row, and launches write nothing more.
    op.add_column("messages", sa.Column("started", sa.Boolean()))
    op.add_column("channels", sa.Column("ambiguous_sends", sa.String(16)))


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.drop_column("ambiguous_sends")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("started")
