"""The change log: a store revision per committed change, and the changes (WatchImages).

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "images",
        sa.Column("store_revision", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_table(
        "image_changes",
        sa.Column("revision", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("image_id", sa.String(), nullable=False),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("image", sa.JSON(), nullable=False),
        sa.Column("commit_time", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_image_changes_commit_time", "image_changes", ["commit_time"])
    state = op.create_table(
        "store_state",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("compact_revision", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(state, [{"id": 1, "revision": 0, "compact_revision": 0}])


def downgrade() -> None:
    op.drop_table("store_state")
    op.drop_index("ix_image_changes_commit_time", table_name="image_changes")
    op.drop_table("image_changes")
    op.drop_column("images", "store_revision")
