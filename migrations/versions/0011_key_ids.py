"""Key ids: which root secret of the keyring (broker.keys) made each MAC, seal, encrypted signing key and HMAC

Expand only: nullable columns, so a release that predates them keeps reading and writing (its rows carry no
key id, and every listed key is tried for them).

Revision ID: 0011_key_ids
Revises: 0010_scim_provisioning
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_key_ids"
down_revision: str | Sequence[str] | None = "0010_scim_provisioning"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand only (see "Writing migrations" in docs/operations.md): an older release serves against this schema.
contract = False

_TABLES = ("audit_events", "audit_segments", "signing_keys", "broker_sessions", "refresh_tokens")


def upgrade() -> None:
    for table in _TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("key_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    for table in reversed(_TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("key_id")
