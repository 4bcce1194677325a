"""idempotency keys and hold timeouts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "idempotency_keys",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("response_json", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_idempotency_keys")),
    )
    # Holds past their timeout are found by this index, not a scan of the ledger; only holds
    # carry a timeout, so only they pay for the index.
    op.create_index(
        "ix_transfers_hold_timeout",
        "transfers",
        ["timeout_at"],
        unique=False,
        sqlite_where=sa.text("pending"),
        postgresql_where=sa.text("pending"),
    )


def downgrade() -> None:
    op.drop_index("ix_transfers_hold_timeout", table_name="transfers")
    op.drop_table("idempotency_keys")
