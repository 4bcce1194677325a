"""The schema: SQLAlchemy 2.0 models. Alembic migrations in ``migrations/`` create it.

The database enforces what must never happen, so two schedulers racing on one
PostgreSQL cannot double-book: capacity CHECKs, no overdraft on developer
accounts, unique nonces, at most one resolution per pending transfer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from depin.states import AllocationState, JobState

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ACCOUNT_KINDS = ("developer", "provider", "escrow", "external")
NODE_STATES = ("active", "draining", "offline")
KEY_STATES = ("active", "revoked")
AGENT_MODES = ("pull", "ray")


# 64-bit ids; on SQLite plain INTEGER, so a primary key is the rowid instead of a second index.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if getattr(dialect, "name", "") == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


class StateColumn(TypeDecorator[StrEnum]):
    """A state enum stored as its value (VARCHAR 16), read back as the enum member."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: str | None, dialect: object) -> str | None:
        return None if value is None else self.enum(value).value

    def process_result_value(self, value: str | None, dialect: object) -> StrEnum | None:
        return None if value is None else self.enum(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Setting(Base):
    """Marketplace-wide settings, such as its id (the audience of envelopes)."""

    __tablename__ = "settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Account(Base):
    """A ledger account with TigerBeetle-style running totals, in micro-USD."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(_in("kind", ACCOUNT_KINDS), name="kind"),
        CheckConstraint(
            "debits_pending >= 0 AND debits_posted >= 0 AND credits_pending >= 0 "
            "AND credits_posted >= 0",
            name="totals_non_negative",
        ),
        # The last word on overdraft: a developer never spends or holds more than was paid in.
        CheckConstraint(
            "NOT must_not_overdraw OR debits_posted + debits_pending <= credits_posted",
            name="no_overdraft",
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    must_not_overdraw: Mapped[bool] = mapped_column(Boolean, default=False)
    debits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    debits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_pending: Mapped[int] = mapped_column(BigInteger, default=0)
    credits_posted: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class AccountKey(Base):
    """A public key that may sign for an account."""

    __tablename__ = "account_keys"
    __table_args__ = (CheckConstraint(_in("state", KEY_STATES), name="state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(64), unique=True)
    public_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    not_after: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class Transfer(Base):
    """An immutable ledger entry, chained to the one before it by hash."""

    __tablename__ = "transfers"
    __table_args__ = (
        CheckConstraint("amount_micro_usd >= 0", name="amount_non_negative"),
        CheckConstraint("debit_account_id <> credit_account_id", name="distinct_accounts"),
        CheckConstraint("id >= 1", name="id_positive"),
        # Holds past their timeout are found here; only holds carry one, so only they pay for it.
        Index(
            "ix_transfers_hold_timeout",
            "timeout_at",
            sqlite_where=text("pending"),
            postgresql_where=text("pending"),
        ),
    )

    # The entry's position in the hash chain, assigned by the ledger: 1, 2, 3 ...
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=False)
    debit_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    credit_account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    amount_micro_usd: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(String(16))
    pending: Mapped[bool] = mapped_column(Boolean, default=False)
    # Set on a post or void: the pending transfer it resolves. UNIQUE: at most once.
    pending_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("transfers.id"), unique=True)
    timeout_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    job_id: Mapped[int | None] = mapped_column(Integer)
    allocation_id: Mapped[int | None] = mapped_column(Integer)
    memo: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class LedgerHead(Base):
    """The end of the hash chain; locked by every writer so the chain stays linear."""

    __tablename__ = "ledger_head"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    hash: Mapped[str] = mapped_column(String(64))


class Node(Base):
    """A provider's node and its free capacity."""

    __tablename__ = "nodes"
    __table_args__ = (
        CheckConstraint("gpus >= 1", name="gpus_positive"),
        # The last word on capacity: never more GPUs booked than the node has.
        CheckConstraint("gpus_free >= 0 AND gpus_free <= gpus", name="capacity"),
        CheckConstraint("price_micro_usd_per_gpu_hour >= 0", name="price_non_negative"),
        CheckConstraint("reliability >= 0 AND reliability <= 1", name="reliability_range"),
        CheckConstraint("lat >= -90 AND lat <= 90 AND lon >= -180 AND lon <= 180", name="coords"),
        CheckConstraint(_in("tier", ("device", "edge", "regional")), name="tier"),
        CheckConstraint(_in("network", ("fiber", "5g", "lte", "wifi")), name="network"),
        CheckConstraint(_in("status", NODE_STATES), name="status"),
        CheckConstraint(_in("agent", AGENT_MODES), name="agent"),
        UniqueConstraint("provider_id", "name", name="uq_nodes_provider_name"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    provider_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    name: Mapped[str | None] = mapped_column(String(64))
    gpu_model: Mapped[str] = mapped_column(String(64))
    accelerator: Mapped[str] = mapped_column(String(8))
    gpus: Mapped[int] = mapped_column(Integer)
    gpus_free: Mapped[int] = mapped_column(Integer)
    vram_gib: Mapped[float] = mapped_column(Float)
    price_micro_usd_per_gpu_hour: Mapped[int] = mapped_column(BigInteger)
    lat: Mapped[float] = mapped_column(Float)
    lon: Mapped[float] = mapped_column(Float)
    tier: Mapped[str] = mapped_column(String(16))
    region: Mapped[str] = mapped_column(String(64))
    network: Mapped[str] = mapped_column(String(8))
    reliability: Mapped[float] = mapped_column(Float)
    rtt_bias_ms: Mapped[float] = mapped_column(Float, default=0.0)
    status: Mapped[str] = mapped_column(String(16), default="active")
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # How its agent serves it: "pull" (asks the coordinator for work over HTTP), "ray" (its
    # raylet joined the operator's cluster), or None (no agent yet: the embedded market's Ray).
    agent: Mapped[str | None] = mapped_column(String(8))
    simulated: Mapped[bool] = mapped_column(Boolean, default=False)  # --simulate-gpus, no GPU
    # What ``reliability`` is learned from (``providers.reliability``): outcomes decayed toward
    # the recent, and heartbeat uptime.
    outcomes_good: Mapped[float] = mapped_column(Float, default=0.0)
    outcomes_bad: Mapped[float] = mapped_column(Float, default=0.0)
    uptime: Mapped[float] = mapped_column(Float, default=1.0)
    declared_reliability: Mapped[float] = mapped_column(Float, default=0.99)  # the prior


class Job(Base):
    """A submitted, verified job and its lifecycle."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("state", tuple(JobState)), name="state"),
        Index("ix_jobs_state_id", "state", "id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"), index=True)
    key_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(64))
    manifest_digest: Mapped[str] = mapped_column(String(80))
    state: Mapped[JobState] = mapped_column(StateColumn(JobState), default=JobState.PENDING)
    max_cost_micro_usd: Mapped[int] = mapped_column(BigInteger)
    hold_transfer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("transfers.id"))
    # The scheduler's record of the last decision about this job (shared by its request class).
    plan_record_id: Mapped[int | None] = mapped_column(ForeignKey("plan_records.id"))
    reasons_json: Mapped[str | None] = mapped_column(Text)  # reasons of the job's own (failures)
    # Its owner asked to cancel it while it ran: its drivers stop it, then it ends cancelled.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Allocations of it lost so far; each requeue waits until ``not_before`` (a backoff).
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class JobManifest(Base):
    """A job's signed manifest and its spec: written once, read rarely, kept off the hot row.

    Scheduling rewrites a job's row (state, plan record) on every claim; with
    the kilobytes of envelope out of it, that row stays a few dozen bytes.
    """

    __tablename__ = "job_manifests"

    job_id: Mapped[int] = mapped_column(
        ForeignKey("jobs.id"), primary_key=True, autoincrement=False
    )
    spec_json: Mapped[str] = mapped_column(Text)
    # The spec without its name: jobs from one template share it, so a cycle parses it once.
    template_json: Mapped[str] = mapped_column(Text)
    envelope_json: Mapped[str] = mapped_column(Text)


class PlanRecord(Base):
    """Why the scheduler placed a request class where it did, or nowhere (depin job explain)."""

    __tablename__ = "plan_records"

    id: Mapped[int] = mapped_column(primary_key=True)
    metric_json: Mapped[str] = mapped_column(Text)
    reasons_json: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Nonce(Base):
    """A seen envelope nonce; the primary key refuses a replay even when submitters race."""

    __tablename__ = "nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id"))
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class Allocation(Base):
    """A job's claim on GPUs of one node, from reservation to its end."""

    __tablename__ = "allocations"
    __table_args__ = (
        CheckConstraint(_in("state", tuple(AllocationState)), name="state"),
        CheckConstraint("gpus >= 1", name="gpus_positive"),
        Index("ix_allocations_state_node", "state", "node_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    node_id: Mapped[int] = mapped_column(ForeignKey("nodes.id"))
    gpus: Mapped[int] = mapped_column(Integer)
    price_micro_usd_per_gpu_hour: Mapped[int] = mapped_column(BigInteger)
    time_limit_s: Mapped[int] = mapped_column(Integer)
    hold_transfer_id: Mapped[int | None] = mapped_column(BigId, ForeignKey("transfers.id"))
    rtt_ms: Mapped[float | None] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    state: Mapped[AllocationState] = mapped_column(
        StateColumn(AllocationState), default=AllocationState.RESERVED
    )
    driver_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    output_tail: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(String(500))
    cost_micro_usd: Mapped[int | None] = mapped_column(BigInteger)
    # Where the provider's usage receipt claimed more than the market saw, and what was paid.
    dispute: Mapped[str | None] = mapped_column(String(500))
    # What the market itself saw: when a launcher claimed it, when its outcome arrived. The
    # bill is the receipt's run within these (``settlement.billable``); the audit re-checks it.
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    seen_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The token an agent presents with every report on this allocation (and its receipts
    # sign): a report for an allocation the market has moved on from is told apart.
    fence: Mapped[str | None] = mapped_column(String(32))
    log_bytes: Mapped[int] = mapped_column(Integer, default=0)  # streamed output kept so far


class AllocationLog(Base):
    """A chunk of an allocation's output, as its agent streamed it (``depin job logs``)."""

    __tablename__ = "allocation_logs"

    id: Mapped[int] = mapped_column(primary_key=True)
    allocation_id: Mapped[int] = mapped_column(ForeignKey("allocations.id"), index=True)
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Receipt(Base):
    """A provider's signed acceptance or usage receipt for an allocation."""

    __tablename__ = "receipts"
    __table_args__ = (
        CheckConstraint(_in("kind", ("acceptance", "usage")), name="kind"),
        UniqueConstraint("allocation_id", "kind", name="uq_receipts_allocation_kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    allocation_id: Mapped[int] = mapped_column(ForeignKey("allocations.id"))
    kind: Mapped[str] = mapped_column(String(16))
    key_id: Mapped[str] = mapped_column(String(64))
    envelope_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class IdempotencyKey(Base):
    """A client's idempotency key: the request it was first used for, and what that returned."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    operation: Mapped[str] = mapped_column(String(32))
    request_hash: Mapped[str] = mapped_column(String(64))
    response_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Driver(Base):
    """A process that launches allocations on Ray (a scheduler, or a waiting submit)."""

    __tablename__ = "drivers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
