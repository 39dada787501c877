"""signing keys: the broker's own JWS keys for access tokens and web-identity tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("alg", sa.String(length=16), nullable=False),
        sa.Column("public_jwk", sa.JSON(), nullable=False),
        sa.Column("private_jwk_encrypted", sa.Text(), nullable=False),
        sa.Column("created_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("retired_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.Column("publish_until", broker.store.models.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("kid"),
        sa.UniqueConstraint("generation"),
    )
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_signing_keys_publish_until"), ["publish_until"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_signing_keys_publish_until"))
    op.drop_table("signing_keys")
