"""server keys: the key that signs page tokens

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 05:00:00

Page tokens carry a position that the daemon trusts only if it made it; an HMAC with a key
every daemon of the database shares authenticates them.
"""

import secrets
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    keys = op.create_table(
        "server_keys",
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("value", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_server_keys")),
    )
    op.bulk_insert(keys, [{"name": "page_tokens", "value": secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table("server_keys")
