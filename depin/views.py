"""Read models: what the market returns to the SDK, the CLI and the HTTP API, and the
queries that build them.

Plain frozen dataclasses with ``to_dict`` for ``--json``. Money is exact:
integer micro-USD (``*_micro_usd``); prices are also given in USD per GPU-hour
because that is how people write them. The queries run inside the caller's
(read) transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from depin.db.models import (
    Account,
    AccountKey,
    Allocation,
    AllocationLog,
    Job,
    JobManifest,
    Node,
    PlanRecord,
    Transfer,
)
from depin.errors import NotFoundError
from depin.ledger import Balance, Ledger
from depin.money import micro_to_usd
from depin.spec import JobSpec
from depin.states import AllocationState, JobState
from providers import registry
from scheduler import plan


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _price_usd(micro: int) -> float:
    return float(micro_to_usd(micro))


@dataclass(frozen=True, slots=True)
class AccountView:
    id: int
    name: str
    kind: str
    key_ids: list[str]
    balance: Balance

    def to_dict(self) -> dict[str, Any]:
        b = self.balance
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "key_ids": list(self.key_ids),
            "available_micro_usd": b.available,
            "posted_micro_usd": b.posted,
            "held_micro_usd": b.debits_pending,
        }


@dataclass(frozen=True, slots=True)
class KeyView:
    """A registered public key: whose it is, and whether it may sign."""

    key_id: str
    account: str
    account_kind: str
    state: str
    public_key: str
    created_at: str | None
    not_before: str | None
    not_after: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, key: AccountKey, account: Account) -> KeyView:
        return cls(
            key.key_id,
            account.name,
            account.kind,
            key.state,
            key.public_key,
            _iso(key.created_at),
            _iso(key.not_before),
            _iso(key.not_after),
            _iso(key.revoked_at),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NodeView:
    id: int
    provider: str
    name: str | None
    gpu_model: str
    accelerator: str
    gpus: int
    gpus_free: int
    vram_gib: float
    price_micro_usd_per_gpu_hour: int
    lat: float
    lon: float
    tier: str
    region: str
    network: str
    reliability: float
    status: str
    last_heartbeat_at: str | None
    agent: str | None = None  # "pull", "ray", or None (no agent: the embedded market's Ray)
    simulated: bool = False  # its agent stands in GPUs it does not have (--simulate-gpus)

    @property
    def price_usd_per_gpu_hour(self) -> float:
        return _price_usd(self.price_micro_usd_per_gpu_hour)

    @classmethod
    def of(cls, node: Node, provider: str) -> NodeView:
        return cls(
            id=node.id,
            provider=provider,
            name=node.name,
            gpu_model=node.gpu_model,
            accelerator=node.accelerator,
            gpus=node.gpus,
            gpus_free=node.gpus_free,
            vram_gib=node.vram_gib,
            price_micro_usd_per_gpu_hour=node.price_micro_usd_per_gpu_hour,
            lat=node.lat,
            lon=node.lon,
            tier=node.tier,
            region=node.region,
            network=node.network,
            reliability=node.reliability,
            status=node.status,
            last_heartbeat_at=_iso(node.last_heartbeat_at),
            agent=node.agent,
            simulated=node.simulated,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"price_usd_per_gpu_hour": self.price_usd_per_gpu_hour}


@dataclass(frozen=True, slots=True)
class AllocationView:
    id: int
    node_id: int
    gpus: int
    price_micro_usd_per_gpu_hour: int
    time_limit_s: int
    rtt_ms: float | None
    score: float
    state: AllocationState
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    exit_code: int | None
    cost_micro_usd: int | None
    output_tail: str | None
    error: str | None
    dispute: str | None = None  # where the provider's receipt claimed more than was seen
    job_id: int | None = None

    @property
    def price_usd_per_gpu_hour(self) -> float:
        return _price_usd(self.price_micro_usd_per_gpu_hour)

    @classmethod
    def of(cls, a: Allocation) -> AllocationView:
        return cls(
            id=a.id,
            node_id=a.node_id,
            gpus=a.gpus,
            price_micro_usd_per_gpu_hour=a.price_micro_usd_per_gpu_hour,
            time_limit_s=a.time_limit_s,
            rtt_ms=a.rtt_ms,
            score=a.score,
            state=AllocationState(a.state),
            created_at=_iso(a.created_at),
            started_at=_iso(a.started_at),
            ended_at=_iso(a.ended_at),
            exit_code=a.exit_code,
            cost_micro_usd=a.cost_micro_usd,
            output_tail=a.output_tail,
            error=a.error,
            dispute=a.dispute,
            job_id=a.job_id,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"price_usd_per_gpu_hour": self.price_usd_per_gpu_hour}


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    name: str
    account: str
    key_id: str
    state: JobState
    manifest_digest: str
    max_cost_micro_usd: int
    created_at: str | None
    ended_at: str | None
    spec: dict[str, Any]
    allocations: list[AllocationView] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state.terminal

    @property
    def allocation(self) -> AllocationView | None:
        """The latest allocation, if the job was ever placed."""
        return self.allocations[-1] if self.allocations else None

    @classmethod
    def of(
        cls,
        job: Job,
        account: str,
        spec_json: str,
        allocations: list[Allocation],
        plan_reasons: list[str] | None = None,
    ) -> JobView:
        return cls(
            id=job.id,
            name=job.name,
            account=account,
            key_id=job.key_id,
            state=JobState(job.state),
            manifest_digest=job.manifest_digest,
            max_cost_micro_usd=job.max_cost_micro_usd,
            created_at=_iso(job.created_at),
            ended_at=_iso(job.ended_at),
            spec=json.loads(spec_json),
            allocations=[AllocationView.of(a) for a in allocations],
            reasons=(json.loads(job.reasons_json) if job.reasons_json else [])
            + (plan_reasons or []),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allocations"] = [a.to_dict() for a in self.allocations]
        return data


@dataclass(frozen=True, slots=True)
class EntryView:
    """A ledger entry as people read it: accounts by name, money in micro-USD."""

    id: int
    kind: str
    debit: str
    credit: str
    amount_micro_usd: int
    pending: bool
    pending_id: int | None
    job_id: int | None
    allocation_id: int | None
    memo: str
    created_at: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ExplainView:
    """Why a job went where it went, or nowhere (``depin job explain``)."""

    job: int
    name: str
    state: JobState
    source: str  # recorded by the scheduler, or planned now
    node_ids: list[int]
    metric: dict[str, Any]
    reasons: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class LogPage:
    """A page of a job's output as its agents streamed it (``depin job logs``)."""

    job_id: int
    state: JobState
    chunks: list[tuple[int, int, str]]  # (cursor, allocation id, text), oldest first
    next_after: int  # the cursor to ask after for what follows
    done: bool  # the job has ended and every chunk of it has been read
    # Output of ended allocations that streamed none (run by the market's own Ray): its tail.
    tails: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- queries -------------------------------------------------------------------------------


def account_view(s: Session, name: str) -> AccountView:
    acct = Ledger(s).account(name)
    kids = s.execute(
        select(AccountKey.key_id).where(AccountKey.account_id == acct.id).order_by(AccountKey.id)
    ).scalars()
    return AccountView(acct.id, acct.name, acct.kind, list(kids), Balance.of(acct))


def balance_page(
    s: Session, account: str | None, *, after: str | None = None, limit: int | None = None
) -> list[Balance]:
    """Balances by account name (after ``after``, a page's cursor), or ``account``'s alone."""
    stmt = select(Account).order_by(Account.name).limit(limit)
    if account is not None:
        stmt = stmt.where(Account.name == account)
    if after is not None:
        stmt = stmt.where(Account.name > after)
    found = [Balance.of(a) for a in s.execute(stmt).scalars()]
    if account is not None and not found:
        raise NotFoundError(f"no account named {account!r}")
    return found


def key_views(
    s: Session, *, account: str | None = None, key_ids: Sequence[str] | None = None
) -> list[KeyView]:
    """Registered keys, oldest first: an account's, or those among ``key_ids``."""
    stmt = select(AccountKey, Account).join(Account, Account.id == AccountKey.account_id)
    if account is not None:
        stmt = stmt.where(AccountKey.account_id == Ledger(s).account(account).id)
    if key_ids is not None:
        stmt = stmt.where(AccountKey.key_id.in_(sorted(set(key_ids))))
    return [KeyView.of(k, a) for k, a in s.execute(stmt.order_by(AccountKey.id))]


def node_views(s: Session, *, after_id: int = 0, limit: int | None = None) -> list[NodeView]:
    """Nodes in id order, from after ``after_id`` (a page's cursor)."""
    stmt = (
        select(Node, Account.name)
        .join(Account, Account.id == Node.provider_id)
        .where(Node.id > after_id)
        .order_by(Node.id)
        .limit(limit)
    )
    return [NodeView.of(n, name) for n, name in s.execute(stmt)]


def node_view(s: Session, node_id: int) -> NodeView:
    node = registry.get_node(s, node_id)
    return NodeView.of(node, s.get_one(Account, node.provider_id).name)


def job_views(
    s: Session,
    *,
    account: str | None = None,
    state: JobState | None = None,
    job_id: int | None = None,
    job_ids: Sequence[int] | None = None,
    limit: int | None = 100,
    before_id: int | None = None,
) -> list[JobView]:
    """Jobs, newest first (older than ``before_id``, a page's cursor), with their
    allocations and the scheduler's reasons."""
    stmt = (
        select(Job, Account.name, JobManifest.spec_json)
        .join(Account, Account.id == Job.account_id)
        .join(JobManifest, JobManifest.job_id == Job.id)
    )
    if account is not None:
        stmt = stmt.where(Job.account_id == Ledger(s).account(account).id)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if job_id is not None:
        stmt = stmt.where(Job.id == job_id)
    if job_ids is not None:
        stmt, limit = stmt.where(Job.id.in_(list(job_ids))), None
    if before_id is not None:
        stmt = stmt.where(Job.id < before_id)
    rows = s.execute(stmt.order_by(Job.id.desc()).limit(limit)).all()
    allocs = _allocations_by_job(s, [job.id for job, _, _ in rows])
    reasons = _plan_reasons(s, [job for job, _, _ in rows])
    return [
        JobView.of(job, name, spec, allocs.get(job.id, []), reasons.get(job.plan_record_id, []))
        for job, name, spec in rows
    ]


def job_owner(s: Session, job_id: int) -> str:
    owner = s.execute(
        select(Account.name).join(Job, Job.account_id == Account.id).where(Job.id == job_id)
    ).scalar()
    if owner is None:
        raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
    return owner


def job_view(s: Session, job_id: int) -> JobView:
    found = job_views(s, job_id=job_id, limit=1)
    if not found:
        raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
    return found[0]


def explain_view(s: Session, job_id: int) -> ExplainView:
    """The plan's record of a job; a pending job not yet looked at is planned afresh."""
    job = job_view(s, job_id)
    row = s.get_one(Job, job_id)
    record = s.get(PlanRecord, row.plan_record_id) if row.plan_record_id else None
    if record is not None:
        metric = json.loads(record.metric_json)
        source = "recorded by the scheduler"
    else:
        fresh = plan([JobSpec.model_validate(job.spec)], registry.offers(s), keys=[job.id])
        metric = fresh.metrics[job.id].to_dict()
        source = "planned now against current free capacity"
    return ExplainView(
        job=job.id,
        name=job.name,
        state=job.state,
        source=source,
        node_ids=[a.node_id for a in job.allocations if a.state != AllocationState.LOST],
        metric=metric,
        reasons=job.reasons,
    )


def entry_views(
    s: Session, *, account: str | None = None, limit: int = 100, before_id: int | None = None
) -> list[EntryView]:
    """The newest ``limit`` entries (of ``account``, or all; older than ``before_id``, a
    page's cursor), oldest of them first."""
    names = dict(s.execute(select(Account.id, Account.name)).all())
    stmt = select(Transfer).order_by(Transfer.id.desc()).limit(limit)
    if account is not None:
        account_id = next((i for i, n in names.items() if n == account), None)
        if account_id is None:
            raise NotFoundError(f"no account named {account!r}")
        stmt = stmt.where(
            (Transfer.debit_account_id == account_id) | (Transfer.credit_account_id == account_id)
        )
    if before_id is not None:
        stmt = stmt.where(Transfer.id < before_id)
    return [
        EntryView(
            id=t.id,
            kind=t.kind,
            debit=names[t.debit_account_id],
            credit=names[t.credit_account_id],
            amount_micro_usd=t.amount_micro_usd,
            pending=t.pending,
            pending_id=t.pending_id,
            job_id=t.job_id,
            allocation_id=t.allocation_id,
            memo=t.memo,
            created_at=t.created_at.isoformat(),
            hash=t.hash,
        )
        for t in reversed(s.execute(stmt).scalars().all())
    ]


def log_page(s: Session, job_id: int, *, after_id: int, limit: int) -> LogPage:
    job = s.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
    allocs = list(
        s.execute(select(Allocation).where(Allocation.job_id == job_id).order_by(Allocation.id))
        .scalars()
        .all()
    )
    rows = s.execute(
        select(AllocationLog.id, AllocationLog.allocation_id, AllocationLog.data)
        .where(AllocationLog.allocation_id.in_([a.id for a in allocs]), AllocationLog.id > after_id)
        .order_by(AllocationLog.id)
        .limit(limit)
    ).all()
    chunks = [(r.id, r.allocation_id, r.data) for r in rows]
    state = JobState(job.state)
    done = state.terminal and len(chunks) < limit
    tails = [
        a.output_tail
        for a in allocs
        if done and not a.log_bytes and a.output_tail and not AllocationState(a.state).active
    ]
    next_after = chunks[-1][0] if chunks else after_id
    return LogPage(job_id, state, chunks, next_after, done, tails)


def allocation_views(
    s: Session, node_id: int, *, limit: int = 100, before_id: int | None = None
) -> list[AllocationView]:
    """The allocations on one node, newest first (older than ``before_id``, a page's cursor)."""
    registry.get_node(s, node_id)  # a node that does not exist is an error, not an empty list
    stmt = select(Allocation).where(Allocation.node_id == node_id)
    if before_id is not None:
        stmt = stmt.where(Allocation.id < before_id)
    rows = s.execute(stmt.order_by(Allocation.id.desc()).limit(limit)).scalars()
    return [AllocationView.of(a) for a in rows]


def _plan_reasons(s: Session, jobs: Sequence[Job]) -> dict[int | None, list[str]]:
    """The scheduler's reasons for jobs that wait or were refused, by plan record id."""
    waiting = (JobState.PENDING, JobState.UNSCHEDULABLE)
    ids = {j.plan_record_id for j in jobs if j.plan_record_id and j.state in waiting}
    if not ids:
        return {}
    rows = s.execute(select(PlanRecord.id, PlanRecord.reasons_json).where(PlanRecord.id.in_(ids)))
    return {rid: json.loads(r) for rid, r in rows if r}


def _allocations_by_job(s: Session, job_ids: Sequence[int]) -> dict[int, list[Allocation]]:
    out: dict[int, list[Allocation]] = {}
    if not job_ids:
        return out
    for alloc in s.execute(
        select(Allocation).where(Allocation.job_id.in_(list(job_ids))).order_by(Allocation.id)
    ).scalars():
        out.setdefault(alloc.job_id, []).append(alloc)
    return out
