"""SAML single logout: the NameID and SessionIndex of each SAML sign-in, beside its broker session

Revision ID: 0009_saml_sessions
Revises: 0008_device_certificates
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0009_saml_sessions"
down_revision: str | None = "0008_device_certificates"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand-only (docs/operations.md, "Writing migrations"): new tables the previous release never reads.
contract = False

Utc = broker.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "saml_sessions",
        sa.Column("session_hmac", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("name_id_hmac", sa.String(length=64), nullable=False),
        sa.Column("logout", sa.JSON(), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("expires_at", Utc(), nullable=False),
        sa.PrimaryKeyConstraint("session_hmac"),
    )
    with op.batch_alter_table("saml_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_saml_sessions_name_id_hmac"), ["name_id_hmac"], unique=False)
        batch_op.create_index(batch_op.f("ix_saml_sessions_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("saml_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_saml_sessions_expires_at"))
        batch_op.drop_index(batch_op.f("ix_saml_sessions_name_id_hmac"))
    op.drop_table("saml_sessions")
