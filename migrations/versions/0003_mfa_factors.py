"""mfa factors: TOTP secrets and WebAuthn credentials held by the broker, recovery codes, lockouts

Revision ID: 0003_mfa_factors
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0003_mfa_factors"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "mfa_factors",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("principal_id", BigId, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("created_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("confirmed_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.Column("last_used_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.Column("secret_encrypted", sa.Text(), nullable=True),
        sa.Column("credential_id", sa.String(length=1400), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("sign_count", sa.BigInteger(), nullable=False),
        sa.Column("user_verified", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("credential_id"),
        sa.UniqueConstraint("principal_id", "name", name="uq_mfa_factors_principal_name"),
    )
    with op.batch_alter_table("mfa_factors", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mfa_factors_principal_id"), ["principal_id"], unique=False)
    op.create_table(
        "mfa_recovery_codes",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("principal_id", BigId, nullable=False),
        sa.Column("code_hmac", sa.String(length=64), nullable=False),
        sa.Column("created_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("used_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["principal_id"], ["principals.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("code_hmac"),
    )
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_mfa_recovery_codes_principal_id"), ["principal_id"], unique=False)
    op.create_table(
        "mfa_lockouts",
        sa.Column("key_hmac", sa.String(length=64), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.Column("locked_until", broker.store.models.UtcDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("key_hmac"),
    )


def downgrade() -> None:
    op.drop_table("mfa_lockouts")
    with op.batch_alter_table("mfa_recovery_codes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_recovery_codes_principal_id"))
    op.drop_table("mfa_recovery_codes")
    with op.batch_alter_table("mfa_factors", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_mfa_factors_principal_id"))
    op.drop_table("mfa_factors")
