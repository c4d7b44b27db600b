"""message parts: the part ids of sent multi-part messages whose receipts are still to come

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-11 10:00:00

A receipt names one part of an SMS. The transport that sent a message in several parts knows
its parts while it runs; this table lets a part's receipt find its message after a restart, or
when the SMSC delivers it on another cluster member's bind.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "message_parts",
        sa.Column("message_id", sa.BigInteger(), nullable=False),
        sa.Column("part_id", sa.String(200), nullable=False),
        sa.Column("delivered", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("message_id", "part_id", name=op.f("pk_message_parts")),
    )
    op.create_index("ix_message_parts_part_id", "message_parts", ["part_id"])


def downgrade() -> None:
    op.drop_index("ix_message_parts_part_id", table_name="message_parts")
    op.drop_table("message_parts")
