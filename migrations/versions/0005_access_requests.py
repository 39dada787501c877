"""temporary privilege and revocation: access requests, revocations, webhook outbox, principals' networks

Revision ID: 0005_access_requests
Revises: 0002
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0005_access_requests"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = broker.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "access_requests",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("principal_id", BigId, nullable=False),
        sa.Column("principal", sa.Text(), nullable=False),
        sa.Column("role_name", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("duration_seconds", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("expires_at", Utc(), nullable=False),
        sa.Column("decided_by", sa.Text(), nullable=True),
        sa.Column("decided_at", Utc(), nullable=True),
        sa.Column("decision_note", sa.Text(), nullable=True),
        sa.Column("grant_starts_at", Utc(), nullable=True),
        sa.Column("grant_ends_at", Utc(), nullable=True),
        sa.Column("ended_at", Utc(), nullable=True),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    for column in ("principal_id", "role_name", "status", "expires_at", "grant_ends_at"):
        op.create_index(f"ix_access_requests_{column}", "access_requests", [column])

    op.create_table(
        "revocations",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("role_name", sa.String(length=64), nullable=True),
        sa.Column("principal_id", BigId, nullable=True),
        sa.Column("issuance_id", BigId, nullable=True),
        sa.Column("source_identity", sa.String(length=64), nullable=True),
        sa.Column("revoked_before", Utc(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("aws_applied", sa.JSON(), nullable=False),
        sa.Column("aws_failed", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.ForeignKeyConstraint(["issuance_id"], ["issuances.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_revocations_created_at", "revocations", ["created_at"])

    op.create_table(
        "webhook_deliveries",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Utc(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("delivered_at", Utc(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_webhook_deliveries_status", "webhook_deliveries", ["status"])
    op.create_index("ix_webhook_deliveries_next_attempt_at", "webhook_deliveries", ["next_attempt_at"])

    op.create_table(
        "principal_networks",
        sa.Column("id", BigId, nullable=False, autoincrement=True),
        sa.Column("principal", sa.String(length=320), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=False),
        sa.Column("first_seen_at", Utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("principal", "network", name="uq_principal_networks"),
    )


def downgrade() -> None:
    op.drop_table("principal_networks")
    op.drop_index("ix_webhook_deliveries_next_attempt_at", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_status", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_index("ix_revocations_created_at", table_name="revocations")
    op.drop_table("revocations")
    for column in ("principal_id", "role_name", "status", "expires_at", "grant_ends_at"):
        op.drop_index(f"ix_access_requests_{column}", table_name="access_requests")
    op.drop_table("access_requests")
