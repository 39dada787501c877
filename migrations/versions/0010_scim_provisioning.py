"""SCIM 2.0 provisioning: provisioned users, groups and memberships

Revision ID: 0010_scim_provisioning
Revises: 0009_saml_sessions
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0010_scim_provisioning"
down_revision: str | Sequence[str] | None = "0009_saml_sessions"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand-only (docs/operations.md, "Writing migrations"): new tables the previous release never reads.
contract = False

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = broker.store.models.UtcDateTime


def upgrade() -> None:
    op.create_table(
        "scim_users",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("user_name", sa.Text(), nullable=False),
        sa.Column("user_name_key", sa.String(length=512), nullable=False),
        sa.Column("external_id", sa.String(length=512), nullable=True),
        sa.Column("email_key", sa.String(length=512), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("updated_at", Utc(), nullable=False),
        sa.Column("principal_id", BigId, nullable=True),
        sa.Column("signed_in_at", Utc(), nullable=True),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("store", "user_name_key", name="uq_scim_users_store_user_name"),
    )
    for column in ("store", "external_id", "email_key", "principal_id"):
        op.create_index(f"ix_scim_users_{column}", "scim_users", [column])

    op.create_table(
        "scim_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("display_name_key", sa.String(length=512), nullable=False),
        sa.Column("external_id", sa.String(length=512), nullable=True),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("updated_at", Utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("store", "display_name_key", name="uq_scim_groups_store_display_name"),
    )
    for column in ("store", "external_id"):
        op.create_index(f"ix_scim_groups_{column}", "scim_groups", [column])

    op.create_table(
        "scim_memberships",
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("display", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["group_id"], ["scim_groups.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["scim_users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("group_id", "user_id"),
    )
    op.create_index("ix_scim_memberships_user_id", "scim_memberships", ["user_id"])


def downgrade() -> None:
    op.drop_table("scim_memberships")
    op.drop_table("scim_groups")
    op.drop_table("scim_users")
