"""Merge the MFA factors, CLI sign-in and access-request branches (they were developed in parallel on 0002).

Revision ID: 0006_merge_parallel_branches
Revises: 0003_mfa_factors, 0004_cli_tokens, 0005_access_requests
Create Date: 2026-11-28
"""

from collections.abc import Sequence

revision: str = "0006_merge_parallel_branches"
down_revision: str | Sequence[str] | None = ("0003_mfa_factors", "0004_cli_tokens", "0005_access_requests")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
