"""The rest of Glance's image record (boot minimums, tags, hidden, virtual size, properties)
and an index per sort key of ListImages.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("min_disk", sa.Integer(), False, "0"),
    ("min_ram", sa.Integer(), False, "0"),
    ("tags", sa.JSON(), False, "[]"),
    ("os_hidden", sa.Boolean(), False, sa.false()),
    ("virtual_size", sa.BigInteger(), True, None),
    ("properties", sa.JSON(), False, "{}"),
)


#: The sort keys that get an index (with id): tables.SORTED_BY_INDEX as of this revision.
_SORT_KEYS = ("name", "status", "container_format", "disk_format", "size", "updated_at")


def upgrade() -> None:
    # Column by column, never a batch: SQLite's batch mode would copy the table and drop
    # the old one, and the drop cascades to every image's locations.
    for name, type_, nullable, default in _COLUMNS:
        op.add_column("images", sa.Column(name, type_, nullable=nullable, server_default=default))
    for key in _SORT_KEYS:
        op.create_index(f"ix_images_{key}_id", "images", [key, "id"])


def downgrade() -> None:
    for key in reversed(_SORT_KEYS):
        op.drop_index(f"ix_images_{key}_id", table_name="images")
    for name, *_ in reversed(_COLUMNS):
        op.drop_column("images", name)
