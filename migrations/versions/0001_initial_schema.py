"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

# 64-bit ids; on SQLite plain INTEGER, so a primary key is the rowid instead of a second index.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("must_not_overdraw", sa.Boolean(), nullable=False),
        sa.Column("debits_pending", sa.BigInteger(), nullable=False),
        sa.Column("debits_posted", sa.BigInteger(), nullable=False),
        sa.Column("credits_pending", sa.BigInteger(), nullable=False),
        sa.Column("credits_posted", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('developer', 'provider', 'escrow', 'external')", name=op.f("ck_accounts_kind")
        ),
        sa.CheckConstraint(
            "NOT must_not_overdraw OR debits_posted + debits_pending <= credits_posted",
            name=op.f("ck_accounts_no_overdraft"),
        ),
        sa.CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
            "AND credits_posted >= 0",
            name=op.f("ck_accounts_totals_non_negative"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("name", name=op.f("uq_accounts_name")),
    )
    op.create_table(
        "drivers",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("host", sa.String(length=128), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_drivers")),
    )
    op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_ledger_head_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_head")),
    )
    op.create_table(
        "plan_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("metric_json", sa.Text(), nullable=False),
        sa.Column("reasons_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_plan_records")),
    )
    op.create_table(
        "settings",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_settings")),
    )
    op.create_table(
        "account_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("public_key", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=True),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('active', 'revoked')", name=op.f("ck_account_keys_state")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_account_keys_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_account_keys")),
        sa.UniqueConstraint("key_id", name=op.f("uq_account_keys_key_id")),
    )
    with op.batch_alter_table("account_keys", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_account_keys_account_id"), ["account_id"], unique=False
        )

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("provider_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=True),
        sa.Column("gpu_model", sa.String(length=64), nullable=False),
        sa.Column("accelerator", sa.String(length=8), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpus_free", sa.Integer(), nullable=False),
        sa.Column("vram_gib", sa.Float(), nullable=False),
        sa.Column("price_micro_usd_per_gpu_hour", sa.BigInteger(), nullable=False),
        sa.Column("lat", sa.Float(), nullable=False),
        sa.Column("lon", sa.Float(), nullable=False),
        sa.Column("tier", sa.String(length=16), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("network", sa.String(length=8), nullable=False),
        sa.Column("reliability", sa.Float(), nullable=False),
        sa.Column("rtt_bias_ms", sa.Float(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "network IN ('fiber', '5g', 'lte', 'wifi')", name=op.f("ck_nodes_network")
        ),
        sa.CheckConstraint(
            "status IN ('active', 'draining', 'offline')", name=op.f("ck_nodes_status")
        ),
        sa.CheckConstraint("tier IN ('device', 'edge', 'regional')", name=op.f("ck_nodes_tier")),
        sa.CheckConstraint("gpus >= 1", name=op.f("ck_nodes_gpus_positive")),
        sa.CheckConstraint("gpus_free >= 0 AND gpus_free <= gpus", name=op.f("ck_nodes_capacity")),
        sa.CheckConstraint(
            "lat >= -90 AND lat <= 90 AND lon >= -180 AND lon <= 180", name=op.f("ck_nodes_coords")
        ),
        sa.CheckConstraint(
            "price_micro_usd_per_gpu_hour >= 0", name=op.f("ck_nodes_price_non_negative")
        ),
        sa.CheckConstraint(
            "reliability >= 0 AND reliability <= 1", name=op.f("ck_nodes_reliability_range")
        ),
        sa.ForeignKeyConstraint(
            ["provider_id"], ["accounts.id"], name=op.f("fk_nodes_provider_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_nodes")),
        sa.UniqueConstraint("provider_id", "name", name="uq_nodes_provider_name"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_provider_id"), ["provider_id"], unique=False)

    op.create_table(
        "nonces",
        sa.Column("nonce", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_nonces_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("nonce", name=op.f("pk_nonces")),
    )
    with op.batch_alter_table("nonces", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nonces_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "transfers",
        sa.Column("id", BigId, autoincrement=False, nullable=False),
        sa.Column("debit_account_id", sa.Integer(), nullable=False),
        sa.Column("credit_account_id", sa.Integer(), nullable=False),
        sa.Column("amount_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("pending", sa.Boolean(), nullable=False),
        sa.Column("pending_id", BigId, nullable=True),
        sa.Column("timeout_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("allocation_id", sa.Integer(), nullable=True),
        sa.Column("memo", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.CheckConstraint("amount_micro_usd >= 0", name=op.f("ck_transfers_amount_non_negative")),
        sa.CheckConstraint(
            "debit_account_id <> credit_account_id", name=op.f("ck_transfers_distinct_accounts")
        ),
        sa.CheckConstraint("id >= 1", name=op.f("ck_transfers_id_positive")),
        sa.ForeignKeyConstraint(
            ["credit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transfers_credit_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["debit_account_id"],
            ["accounts.id"],
            name=op.f("fk_transfers_debit_account_id_accounts"),
        ),
        sa.ForeignKeyConstraint(
            ["pending_id"], ["transfers.id"], name=op.f("fk_transfers_pending_id_transfers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_transfers")),
        sa.UniqueConstraint("pending_id", name=op.f("uq_transfers_pending_id")),
    )
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_transfers_credit_account_id"), ["credit_account_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_transfers_debit_account_id"), ["debit_account_id"], unique=False
        )

    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("account_id", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("manifest_digest", sa.String(length=80), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("max_cost_micro_usd", sa.BigInteger(), nullable=False),
        sa.Column("hold_transfer_id", BigId, nullable=True),
        sa.Column("plan_record_id", sa.Integer(), nullable=True),
        sa.Column("reasons_json", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('pending', 'scheduled', 'running', 'succeeded', 'failed', "
            "'unschedulable', 'cancelled')",
            name=op.f("ck_jobs_state"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_jobs_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["hold_transfer_id"], ["transfers.id"], name=op.f("fk_jobs_hold_transfer_id_transfers")
        ),
        sa.ForeignKeyConstraint(
            ["plan_record_id"],
            ["plan_records.id"],
            name=op.f("fk_jobs_plan_record_id_plan_records"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_account_id"), ["account_id"], unique=False)
        batch_op.create_index("ix_jobs_state_id", ["state", "id"], unique=False)

    op.create_table(
        "job_manifests",
        sa.Column("job_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("spec_json", sa.Text(), nullable=False),
        sa.Column("template_json", sa.Text(), nullable=False),
        sa.Column("envelope_json", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_manifests_job_id_jobs")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_manifests")),
    )
    op.create_table(
        "allocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("node_id", sa.Integer(), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("price_micro_usd_per_gpu_hour", sa.BigInteger(), nullable=False),
        sa.Column("time_limit_s", sa.Integer(), nullable=False),
        sa.Column("hold_transfer_id", BigId, nullable=True),
        sa.Column("rtt_ms", sa.Float(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("driver_id", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("output_tail", sa.Text(), nullable=True),
        sa.Column("error", sa.String(length=500), nullable=True),
        sa.Column("cost_micro_usd", sa.BigInteger(), nullable=True),
        sa.CheckConstraint(
            "state IN ('reserved', 'running', 'succeeded', 'failed', 'lost', 'cancelled')",
            name=op.f("ck_allocations_state"),
        ),
        sa.CheckConstraint("gpus >= 1", name=op.f("ck_allocations_gpus_positive")),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_allocations_job_id_jobs")),
        sa.ForeignKeyConstraint(
            ["node_id"], ["nodes.id"], name=op.f("fk_allocations_node_id_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["hold_transfer_id"],
            ["transfers.id"],
            name=op.f("fk_allocations_hold_transfer_id_transfers"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_allocations")),
    )
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_allocations_job_id"), ["job_id"], unique=False)
        batch_op.create_index("ix_allocations_state_node", ["state", "node_id"], unique=False)
    _seed()


def _seed() -> None:
    """The chain head, the system accounts and this marketplace's id (the envelope audience)."""
    now = datetime.now(UTC)
    if op.get_bind().dialect.name == "sqlite":
        now = now.replace(tzinfo=None)  # SQLite stores UTC as naive text, like depin's UtcDateTime
    op.bulk_insert(
        sa.table("ledger_head", sa.column("id"), sa.column("seq"), sa.column("hash")),
        [{"id": 1, "seq": 0, "hash": "0" * 64}],
    )
    accounts = sa.table(
        "accounts",
        *(sa.column(c) for c in ("name", "kind", "must_not_overdraw", "created_at")),
        *(
            sa.column(c)
            for c in ("debits_pending", "debits_posted", "credits_pending", "credits_posted")
        ),
    )
    zero = {"debits_pending": 0, "debits_posted": 0, "credits_pending": 0, "credits_posted": 0}
    op.bulk_insert(
        accounts,
        [
            {
                "name": "@world",
                "kind": "external",
                "must_not_overdraw": False,
                "created_at": now,
                **zero,
            },
            {
                "name": "@escrow",
                "kind": "escrow",
                "must_not_overdraw": False,
                "created_at": now,
                **zero,
            },
        ],
    )
    op.bulk_insert(
        sa.table("settings", sa.column("key"), sa.column("value")),
        [
            {"key": "market_id", "value": f"depin-{uuid.uuid4().hex[:16]}"},
            # Bumped whenever a node appears, disappears or changes: schedulers that cache a
            # snapshot of the fleet rebuild it then, and otherwise only refresh free GPUs.
            {"key": "nodes_version", "value": "0"},
        ],
    )


def downgrade() -> None:
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_index("ix_allocations_state_node")
        batch_op.drop_index(batch_op.f("ix_allocations_job_id"))

    op.drop_table("allocations")
    op.drop_table("job_manifests")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_id")
        batch_op.drop_index(batch_op.f("ix_jobs_account_id"))

    op.drop_table("jobs")
    with op.batch_alter_table("transfers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_transfers_debit_account_id"))
        batch_op.drop_index(batch_op.f("ix_transfers_credit_account_id"))

    op.drop_table("transfers")
    with op.batch_alter_table("nonces", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nonces_expires_at"))

    op.drop_table("nonces")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_provider_id"))

    op.drop_table("nodes")
    with op.batch_alter_table("account_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_account_keys_account_id"))

    op.drop_table("account_keys")
    op.drop_table("settings")
    op.drop_table("plan_records")
    op.drop_table("ledger_head")
    op.drop_table("drivers")
    op.drop_table("accounts")
