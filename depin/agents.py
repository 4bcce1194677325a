"""The market's side of node agents: heartbeats, work handed out, and what agents report.

    heartbeat      the agent is alive: the node is active again, its uptime learned, and
                   allocations it runs that the market has moved on from are named to stop
    work           allocations reserved on the node (the agent's long-poll), and running
                   ones whose owners cancelled
    accept         reserved -> running, on the provider's signed acceptance
    append_log     a chunk of a running allocation's output
    report         the outcome and usage receipt: settled as any outcome is (``settlement``)
    expire_silent  nodes silent past TTL + grace go offline; their allocations are lost

Every report carries the allocation's fence token, and every receipt signs it: a
report for an allocation already declared lost is kept (its receipt, when it
verifies) but not paid, since the job has moved on. Functions work inside the
caller's transaction; those that move allocations take the ledger's lock first.
"""

from __future__ import annotations

import hmac
from datetime import datetime, timedelta

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from depin import receipts, settlement
from depin.db.models import Allocation, AllocationLog, Job, Node, Receipt
from depin.errors import (
    ConflictError,
    ForbiddenError,
    InputError,
    NotFoundError,
    UnknownGpuModelError,
)
from depin.ledger import Ledger
from depin.limits import AGENT_HEARTBEAT_INTERVAL_S, LOG_BYTES_PER_ALLOCATION
from depin.runtime.agentwire import (
    Acceptance,
    Control,
    HeartbeatReply,
    LogChunk,
    NodeReport,
    Report,
    Work,
    WorkReply,
)
from depin.runtime.work import Outcome
from depin.states import AllocationState, JobState
from providers import registry
from providers.catalog import canonical_name

LATE_REPORT = "reported after the allocation was declared lost: kept, not paid"
LOG_DROPPED = "\n[depin: output beyond {limit} bytes was not kept]\n"


def heartbeat(
    s: Session, node_id: int, report: NodeReport, *, now: datetime, ttl_s: float, grace_s: float
) -> HeartbeatReply:
    """Record the heartbeat; refuse a machine with less than the node was registered with."""
    node = registry.get_node(s, node_id)
    if report.gpus < node.gpus:
        raise ConflictError(
            f"node {node_id} is registered with {node.gpus} GPU(s) but its machine has "
            f"{report.gpus}: register what the machine has"
        )
    if report.gpu_model is not None and _model(report.gpu_model) != node.gpu_model:
        raise ConflictError(
            f"node {node_id} is registered as {node.gpu_model} but its machine has "
            f"{report.gpu_model}"
        )
    # Uptime counts beats at the coordinator's pace, not the agent's word: a flood of beats
    # cannot buy back an outage (``registry.heartbeat`` counts at most one per half interval).
    interval_s = min(max(report.interval_s, AGENT_HEARTBEAT_INTERVAL_S), ttl_s)
    forgotten = _forgotten(s, node, report) if report.mode == "pull" else []
    waiting = _reserved(s, node_id) if report.leaving else []
    if forgotten or waiting:
        ledger = Ledger(s)
        ledger.lock()  # before the node's row, as every writer of allocations takes them
        for alloc in forgotten:
            _lose(s, ledger, alloc, f"node {node_id}'s agent no longer runs it (restarted?)")
        for alloc in waiting:
            _lose(s, ledger, alloc, f"node {node_id}'s agent left before it started")
    registry.heartbeat(
        s, node_id, now=now, agent=report.mode, simulated=report.simulated, interval_s=interval_s
    )
    stop = _stale(s, node_id, report.running) if report.running else []
    if report.leaving:  # offline at once, not after TTL + grace of silence
        registry.set_status(s, node_id, "offline")
    s.flush()
    learned = s.execute(select(Node.reliability).where(Node.id == node_id)).scalar_one()
    return HeartbeatReply(
        status="offline" if report.leaving else "active",
        ttl_s=ttl_s,
        grace_s=grace_s,
        reliability=learned,
        stop=stop,
    )


def _forgotten(s: Session, node: Node, report: NodeReport) -> list[Allocation]:
    """Allocations running on the node, accepted before its previous heartbeat, that its
    agent no longer lists: it restarted, or never heard its acceptance taken. Nobody runs
    them; left alone they would hold GPUs and money until their holds time out."""
    if node.last_heartbeat_at is None:
        return []
    return list(
        s.execute(
            select(Allocation).where(
                Allocation.node_id == node.id,
                Allocation.state == AllocationState.RUNNING,
                Allocation.claimed_at < node.last_heartbeat_at,
                Allocation.id.not_in(report.running),
            )
        ).scalars()
    )


def _reserved(s: Session, node_id: int) -> list[Allocation]:
    return list(
        s.execute(
            select(Allocation).where(
                Allocation.node_id == node_id, Allocation.state == AllocationState.RESERVED
            )
        ).scalars()
    )


def _lose(s: Session, ledger: Ledger, alloc: Allocation, reason: str) -> None:
    """The allocation is lost with its node: GPUs and hold released, the job queued again."""
    job = s.get(Job, alloc.job_id)
    assert job is not None
    settlement.requeue(s, ledger, alloc, job, reason)
    registry.record_outcome(s, alloc.node_id, node_fault=True)


def _model(name: str) -> str:
    try:
        return canonical_name(name)
    except UnknownGpuModelError:  # an unknown model is simply not the registered one
        return name


def _stale(s: Session, node_id: int, running: list[int]) -> list[int]:
    """Of the allocations an agent says it runs, those the market no longer wants run there:
    ended, lost, on another node, or cancelled by their owners. (One still reserved there
    is wanted: its acceptance may be on its way.)"""
    wanted = set(
        s.execute(
            select(Allocation.id)
            .join(Job, Job.id == Allocation.job_id)
            .where(
                Allocation.id.in_(running),
                Allocation.node_id == node_id,
                Allocation.state.in_((AllocationState.RESERVED, AllocationState.RUNNING)),
                Job.cancel_requested_at.is_(None),
            )
        ).scalars()
    )
    return sorted(set(running) - wanted)


def work(s: Session, node_id: int, *, market_id: str, limit: int) -> WorkReply:
    """The allocations reserved on the node, oldest first, and running ones to stop."""
    rows = s.execute(
        select(Allocation, Job)
        .join(Job, Job.id == Allocation.job_id)
        .where(Allocation.node_id == node_id, Allocation.state == AllocationState.RESERVED)
        .order_by(Allocation.id)
        .limit(limit)
    ).all()
    specs = settlement.specs_of(s, [job.id for _, job in rows]) if rows else {}
    items = []
    for alloc, job in rows:
        spec = specs[job.id]
        items.append(
            Work(
                allocation_id=alloc.id,
                job_id=job.id,
                job_name=job.name,
                command=list(spec.command),
                gpus=alloc.gpus,
                time_limit_s=alloc.time_limit_s,
                network=spec.network,
                memory_gib=spec.resources.memory_gib,
                fence=alloc.fence or "",
                facts=settlement.allocation_facts(alloc, job, market_id),
            )
        )
    stop = settlement.cancelled_running(s, Allocation.node_id == node_id)
    return WorkReply(work=items, stop=stop)


def _fenced(s: Session, node_id: int, allocation_id: int, fence: str) -> Allocation:
    """The allocation, if it is on ``node_id`` and ``fence`` is its token."""
    alloc = s.get(Allocation, allocation_id, populate_existing=True)
    if alloc is None:
        raise NotFoundError(f"no allocation with id {allocation_id}")
    if alloc.node_id != node_id:
        raise ForbiddenError(f"allocation {allocation_id} is not on node {node_id}")
    if not (alloc.fence and hmac.compare_digest(alloc.fence, fence)):
        raise ConflictError(f"allocation {allocation_id}: the fence token does not match")
    return alloc


def accept(
    s: Session, node_id: int, allocation_id: int, body: Acceptance, *, market_id: str, now: datetime
) -> None:
    """The node takes a reserved allocation: it runs from now, on the provider's word."""
    Ledger(s).lock()  # a cancel or a loss is ordered before this, or after
    alloc = _fenced(s, node_id, allocation_id, body.fence)
    if alloc.state == AllocationState.RUNNING and alloc.driver_id is None:
        return  # taken already: a retry whose first answer was lost
    if registry.get_node(s, node_id).status != "active":
        raise ConflictError(f"node {node_id} is offline: its agent must heartbeat first")
    if alloc.state != AllocationState.RESERVED:
        raise ConflictError(f"allocation {allocation_id} is {alloc.state}: do not run it")
    job = s.get(Job, alloc.job_id, populate_existing=True)
    assert job is not None
    facts = settlement.allocation_facts(alloc, job, market_id)
    keys = registry.provider_keys(s, [node_id], active_only=True).get(node_id, {})
    try:
        claims = receipts.verify(
            body.acceptance_json, "acceptance", facts, settlement.key_finder(keys)
        )
    except receipts.ReceiptError as exc:  # the agent's own mistake: 422, nothing written
        raise InputError(str(exc)) from None
    s.add(
        Receipt(
            allocation_id=alloc.id,
            kind="acceptance",
            key_id=claims["key_id"],
            envelope_json=body.acceptance_json,
        )
    )
    alloc.state, alloc.started_at, alloc.claimed_at = AllocationState.RUNNING, now, now
    alloc.driver_id = None  # the node's heartbeats, not a driver's, keep it alive
    job.state, job.updated_at = JobState.RUNNING, now


def append_log(s: Session, node_id: int, allocation_id: int, body: LogChunk) -> Control:
    """Keep a chunk of output (up to ``LOG_BYTES_PER_ALLOCATION`` per allocation); tell the
    agent to stop when the market no longer wants the allocation run."""
    alloc = _fenced(s, node_id, allocation_id, body.fence)
    if alloc.state != AllocationState.RUNNING:
        return Control(stop=True)
    job = s.get(Job, alloc.job_id)
    data = settlement.clean_text(body.data)
    size = len(data.encode())
    room = LOG_BYTES_PER_ALLOCATION - alloc.log_bytes
    if data and room > 0:
        if size > room:
            kept = data.encode()[:room].decode(errors="ignore")
            data, size = kept + LOG_DROPPED.format(limit=LOG_BYTES_PER_ALLOCATION), room
        s.add(AllocationLog(allocation_id=alloc.id, data=data))
        alloc.log_bytes += size
    return Control(stop=job is not None and job.cancel_requested_at is not None)


def report(
    s: Session, node_id: int, allocation_id: int, body: Report, *, market_id: str, now: datetime
) -> None:
    """Settle what the agent reports. Reporting again is a no-op; a report for an allocation
    already declared lost keeps its usage receipt (when it verifies) and is not paid."""
    Ledger(s).lock()
    alloc = _fenced(s, node_id, allocation_id, body.fence)
    if alloc.state == AllocationState.LOST:
        _keep_late(s, alloc, body, market_id)
        return
    if alloc.state != AllocationState.RUNNING:
        return
    outcome = Outcome(
        alloc.id,
        now,
        now,
        body.exit_code,
        body.output_tail,
        body.error,
        usage_json=body.usage_json,
        node_fault=body.node_fault,
        lost=body.lost,
    )
    settlement.finish(s, outcome, market_id=market_id, now=now)


def _keep_late(s: Session, alloc: Allocation, body: Report, market_id: str) -> None:
    alloc.dispute = LATE_REPORT
    job = s.get(Job, alloc.job_id)
    assert job is not None
    facts = settlement.allocation_facts(alloc, job, market_id)
    keys = registry.provider_keys(s, [alloc.node_id], active_only=True).get(alloc.node_id, {})
    try:
        usage = receipts.verify_usage(body.usage_json, facts, settlement.key_finder(keys))
    except receipts.ReceiptError:
        return
    have = select(func.count()).where(Receipt.allocation_id == alloc.id, Receipt.kind == "usage")
    if not s.execute(have).scalar_one():
        s.add(
            Receipt(
                allocation_id=alloc.id,
                kind="usage",
                key_id=usage.key_id,
                envelope_json=body.usage_json or "",
            )
        )


def _stranded(cutoff: datetime) -> Select[tuple[Allocation]]:
    """Reserved and running allocations on nodes whose agents are silent since ``cutoff``."""
    return (
        select(Allocation)
        .join(Node, Node.id == Allocation.node_id)
        .where(
            Node.agent.is_not(None),
            Node.last_heartbeat_at < cutoff,
            Allocation.state.in_((AllocationState.RESERVED, AllocationState.RUNNING)),
        )
    )


def anything_silent(s: Session, *, now: datetime, timeout_s: float) -> bool:
    """Whether ``expire_silent`` has anything to do: a read, so the common answer (no)
    costs no write transaction."""
    if registry.silent_nodes(s, now=now, timeout_s=timeout_s):
        return True
    cutoff = now - timedelta(seconds=timeout_s)
    return s.execute(_stranded(cutoff).limit(1)).first() is not None


def expire_silent(s: Session, *, now: datetime, timeout_s: float) -> list[int]:
    """Nodes silent for ``timeout_s`` go offline; the reserved and running allocations of any
    node whose agent is that silent (one that left included) are lost: capacity released,
    hold voided, the job queued again. Returns those allocations."""
    if not anything_silent(s, now=now, timeout_s=timeout_s):
        return []
    ledger = Ledger(s)
    ledger.lock()  # before the nodes' rows, as every writer of allocations takes them
    registry.mark_silent_nodes_offline(s, now=now, timeout_s=timeout_s)
    lost = s.execute(_stranded(now - timedelta(seconds=timeout_s))).scalars().all()
    for alloc in lost:
        why = f"node {alloc.node_id} went silent (no heartbeat for {timeout_s:g} s)"
        _lose(s, ledger, alloc, why)
    return [a.id for a in lost]
