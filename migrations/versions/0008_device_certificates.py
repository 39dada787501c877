"""device certificates: certificates seen at sign-in, and those revoked by an operator

Revision ID: 0008_device_certificates
Revises: 0007_audit_segments
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0008_device_certificates"
down_revision: str | None = "0007_audit_segments"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand-only (docs/operations.md, "Writing migrations"): new tables the previous release never reads.
contract = False

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = broker.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "device_certificates",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("fingerprint", sa.String(length=64), nullable=True),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("principal_id", BigId, nullable=True),
        sa.Column("not_after", Utc(), nullable=True),
        sa.Column("first_seen_at", Utc(), nullable=True),
        sa.Column("last_seen_at", Utc(), nullable=True),
        sa.Column("revoked_at", Utc(), nullable=True),
        sa.Column("revoked_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("fingerprint"),
    )
    op.create_index("ix_device_certificates_serial", "device_certificates", ["serial"])
    op.create_index("ix_device_certificates_principal_id", "device_certificates", ["principal_id"])


def downgrade() -> None:
    op.drop_index("ix_device_certificates_principal_id", table_name="device_certificates")
    op.drop_index("ix_device_certificates_serial", table_name="device_certificates")
    op.drop_table("device_certificates")
