"""messages: how many provider messages (SMS parts) each one took

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL: not sent yet, or one part (every message before this revision).
    op.add_column("messages", sa.Column("parts", sa.SmallInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("parts")
