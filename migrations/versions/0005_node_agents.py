"""node agents: an allocation's fence token and its streamed output; a job's attempts and
backoff; a node's agent, whether its GPUs are simulated, and its learned reliability

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("allocations") as batch:
        batch.add_column(sa.Column("fence", sa.String(length=32), nullable=True))
        batch.add_column(sa.Column("log_bytes", sa.Integer(), nullable=False, server_default="0"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("not_before", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("agent", sa.String(length=8), nullable=True))
        batch.add_column(
            sa.Column("simulated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("outcomes_good", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("outcomes_bad", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("uptime", sa.Float(), nullable=False, server_default="1"))
        batch.add_column(
            sa.Column("declared_reliability", sa.Float(), nullable=False, server_default="0.99")
        )
        batch.create_check_constraint("agent", "agent IN ('pull', 'ray')")
    # What providers said so far is the prior of what the market will learn.
    op.execute("UPDATE nodes SET declared_reliability = reliability")
    op.create_table(
        "allocation_logs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("allocation_id", sa.Integer(), nullable=False),
        sa.Column("data", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["allocation_id"],
            ["allocations.id"],
            name=op.f("fk_allocation_logs_allocation_id_allocations"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocation_logs")),
    )
    op.create_index(op.f("ix_allocation_logs_allocation_id"), "allocation_logs", ["allocation_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_allocation_logs_allocation_id"), table_name="allocation_logs")
    op.drop_table("allocation_logs")
    with op.batch_alter_table("nodes") as batch:
        batch.drop_constraint("agent", type_="check")
        for column in (
            "declared_reliability",
            "uptime",
            "outcomes_bad",
            "outcomes_good",
            "simulated",
            "agent",
        ):
            batch.drop_column(column)
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("not_before")
        batch.drop_column("attempts")
    with op.batch_alter_table("allocations") as batch:
        batch.drop_column("log_bytes")
        batch.drop_column("fence")
