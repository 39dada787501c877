"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_chain_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("event_id", sa.String(length=36), nullable=False),
        sa.Column("occurred_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("event", sa.String(length=64), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("principal", sa.Text(), nullable=True),
        sa.Column("store", sa.String(length=64), nullable=True),
        sa.Column("channel", sa.String(length=16), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("event_id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_event"), ["event"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_occurred_at"), ["occurred_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_principal"), ["principal"], unique=False)

    op.create_table(
        "login_requests",
        sa.Column("state_hmac", sa.String(length=64), nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("browser_hmac", sa.String(length=64), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("expires_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("state_hmac"),
    )
    with op.batch_alter_table("login_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_login_requests_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "principals",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("store", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("first_seen_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("store", "subject", name="uq_principals_store_subject"),
    )
    op.create_table(
        "replay_guard",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("key_hmac", sa.String(length=64), nullable=False),
        sa.Column("expires_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key_hmac"),
    )
    with op.batch_alter_table("replay_guard", schema=None) as batch_op:
        batch_op.create_index("ix_replay_guard_expires_at", ["expires_at"], unique=False)

    op.create_table(
        "broker_sessions",
        sa.Column("id_hmac", sa.String(length=64), nullable=False),
        sa.Column("principal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("identity", sa.JSON(), nullable=False),
        sa.Column("created_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("last_seen_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("expires_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("revoked_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
        ),
        sa.PrimaryKeyConstraint("id_hmac"),
    )
    with op.batch_alter_table("broker_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_broker_sessions_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_broker_sessions_principal_id"), ["principal_id"], unique=False)

    op.create_table(
        "issuances",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("principal_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("session_hmac", sa.String(length=64), nullable=True),
        sa.Column("role_name", sa.String(length=64), nullable=False),
        sa.Column("role_arn", sa.Text(), nullable=False),
        sa.Column("account", sa.String(length=12), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("access_key_id", sa.String(length=128), nullable=False),
        sa.Column("source_identity", sa.String(length=64), nullable=False),
        sa.Column("role_session_name", sa.String(length=64), nullable=False),
        sa.Column("session_tags", sa.JSON(), nullable=False),
        sa.Column("transitive_tag_keys", sa.JSON(), nullable=False),
        sa.Column("policy_digest", sa.String(length=64), nullable=True),
        sa.Column("requested_duration_seconds", sa.Integer(), nullable=True),
        sa.Column("granted_duration_seconds", sa.Integer(), nullable=False),
        sa.Column("issued_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("expires_at", broker.store.models.UtcDateTime(), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("revoked_at", broker.store.models.UtcDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("access_key_id"),
    )
    with op.batch_alter_table("issuances", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_issuances_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_issuances_principal_id"), ["principal_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_issuances_role_name"), ["role_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("issuances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_issuances_role_name"))
        batch_op.drop_index(batch_op.f("ix_issuances_principal_id"))
        batch_op.drop_index(batch_op.f("ix_issuances_expires_at"))

    op.drop_table("issuances")
    with op.batch_alter_table("broker_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_broker_sessions_principal_id"))
        batch_op.drop_index(batch_op.f("ix_broker_sessions_expires_at"))

    op.drop_table("broker_sessions")
    with op.batch_alter_table("replay_guard", schema=None) as batch_op:
        batch_op.drop_index("ix_replay_guard_expires_at")

    op.drop_table("replay_guard")
    op.drop_table("principals")
    with op.batch_alter_table("login_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_requests_expires_at"))

    op.drop_table("login_requests")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_principal"))
        batch_op.drop_index(batch_op.f("ix_audit_events_occurred_at"))
        batch_op.drop_index(batch_op.f("ix_audit_events_event"))

    op.drop_table("audit_events")
    op.drop_table("audit_chain_head")
