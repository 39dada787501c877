"""audit events sealed in segments: per-event MACs, segments, signed digests; legacy events become segment 0

Revision ID: 0007_audit_segments
Revises: 0006_merge_parallel_branches
Create Date: 2026-12-01

Events written before this revision keep their ``prev_hash``/``hash`` chain and become segment 0 (position
``seq - 1``), with the count the old head row named. The first sealer pass after the upgrade seals segment 0 with
the broker's key, so this migration needs no secret. The head row that serialized every append is dropped: a
replica still running the previous release then refuses audited requests (fail closed) instead of writing
events in the old form.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import broker.store.models

revision: str = "0007_audit_segments"
down_revision: str | Sequence[str] | None = "0006_merge_parallel_branches"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Utc = broker.store.models.UtcDateTime
GENESIS = "0" * 64


def upgrade() -> None:
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("writer", sa.String(length=96), nullable=True))
        batch_op.add_column(sa.Column("mac", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("segment", BigId, nullable=True))
        batch_op.add_column(sa.Column("position", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("chain", sa.String(length=64), nullable=True))
        batch_op.alter_column("prev_hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.alter_column("hash", existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index("ix_audit_events_segment_position", ["segment", "position"], unique=True)

    op.create_table(
        "audit_segments",
        sa.Column("number", BigId, autoincrement=False, nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("sealed_at", Utc(), nullable=True),
        sa.Column("seal", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("number"),
    )
    op.create_table(
        "audit_digests",
        sa.Column("number", BigId, autoincrement=False, nullable=False),
        sa.Column("segment", BigId, nullable=False),
        sa.Column("created_at", Utc(), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("published_at", Utc(), nullable=True),
        sa.PrimaryKeyConstraint("number"),
    )

    bind = op.get_bind()
    head = bind.execute(sa.text("SELECT seq FROM audit_chain_head WHERE id = 1")).scalar()
    rows = bind.execute(sa.text("SELECT count(*) FROM audit_events")).scalar() or 0
    # The count the old head named, so events deleted from the end before the upgrade are still reported.
    count = int(head) if head is not None else int(rows)
    bind.execute(sa.text("UPDATE audit_events SET segment = 0, position = seq - 1"))
    bind.execute(
        sa.text("INSERT INTO audit_segments (number, count, prev_hash, hash) VALUES (0, :count, :genesis, '')"),
        {"count": count, "genesis": GENESIS},
    )
    if bind.dialect.name == "postgresql":
        # New events take their insertion id from a sequence instead of the locked head row.
        op.execute("CREATE SEQUENCE audit_events_seq_seq OWNED BY audit_events.seq")
        op.execute("SELECT setval('audit_events_seq_seq', COALESCE((SELECT max(seq) FROM audit_events), 0) + 1, false)")
        op.execute("ALTER TABLE audit_events ALTER COLUMN seq SET DEFAULT nextval('audit_events_seq_seq')")
    op.drop_table("audit_chain_head")


def downgrade() -> None:
    raise RuntimeError(
        "0007_audit_segments cannot be downgraded: events sealed in segments have no place in the old "
        "one-row-at-a-time chain. Restore the pre-upgrade backup instead."
    )
