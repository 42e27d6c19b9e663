"""The first schema: images and their ordered locations.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False, server_default=""),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("checksum", sa.String(), nullable=False, server_default=""),
        sa.Column("os_hash_algo", sa.String(), nullable=False, server_default=""),
        sa.Column("os_hash_value", sa.String(), nullable=False, server_default=""),
        sa.Column("disk_format", sa.String(), nullable=False, server_default=""),
        sa.Column("container_format", sa.String(), nullable=False, server_default=""),
        sa.Column("visibility", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False, server_default=""),
        sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False, server_default="1"),
    )
    op.create_index("ix_images_created_at_id", "images", ["created_at", "id"])
    op.create_index("ix_images_status_created_at_id", "images", ["status", "created_at", "id"])
    op.create_table(
        "image_locations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "image_id",
            sa.String(),
            sa.ForeignKey("images.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.UniqueConstraint("image_id", "position", name="uq_image_locations_position"),
    )


def downgrade() -> None:
    op.drop_table("image_locations")
    op.drop_index("ix_images_status_created_at_id", table_name="images")
    op.drop_index("ix_images_created_at_id", table_name="images")
    op.drop_table("images")
