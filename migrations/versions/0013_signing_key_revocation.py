"""signing key revocation: when an operator revoked a key (``broker signing-keys rotate --revoke``)

Revision ID: 0013_signing_key_revocation
Revises: 0012_schema_compatibility
Create Date: 2026-12-01

A revoked key leaves the JWKS at once but its row stays until its tokens would have expired, so the broker
refuses them as revoked (and says so in the audit trail) rather than as unknown.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0013_signing_key_revocation"
down_revision: str | None = "0012_schema_compatibility"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand-only: a nullable column the previous release never reads (it publishes a revoked key again until the
# key's tokens expire, which is why `broker signing-keys rotate --revoke` waits for the new release).
contract = False


def upgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revoked_at", broker.store.models.UtcDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("signing_keys", schema=None) as batch_op:
        batch_op.drop_column("revoked_at")
