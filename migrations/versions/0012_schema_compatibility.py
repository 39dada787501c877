"""schema compatibility: the oldest code that serves this schema, for releases older than the migrating one

Revision ID: 0012_schema_compatibility
Revises: 0011_key_ids
Create Date: 2026-12-01

``broker.store.migrations.record_compatibility`` (called by env.py) fills the one row after every upgrade and
downgrade; an older release reads it to decide whether it can serve a schema it does not know.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_schema_compatibility"
down_revision: str | None = "0011_key_ids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand-only: a new table that older releases never read.
contract = False


def upgrade() -> None:
    op.create_table(
        "schema_compatibility",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("serves_from", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("schema_compatibility")
