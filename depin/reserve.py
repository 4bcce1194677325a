"""Reserve a plan: capacity, allocations and holds at the locked price, in one transaction.

The plan may be stale (another scheduler may have booked a node or taken a
job since the snapshot), so every claim is conditional: a job moves pending
-> scheduled only if still pending, a node gives GPUs only if it still has
them at the price the plan saw, and the nodes' CHECK has the last word.

A cycle reserves in a handful of statements for the whole batch (jobs
claimed in one, capacity in one executemany, allocations and ledger entries
in one INSERT each). If any claim comes up short, that attempt is rolled back
to a savepoint and the same path runs job by job, skipping what was taken.
"""

from __future__ import annotations

import json
import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import orjson
from sqlalchemy import select
from sqlalchemy.orm import Session

from depin.db.engine import db_time, executemany, reserve_ids
from depin.db.models import Job, JobManifest, utcnow
from depin.errors import (
    CapacityError,
    ConflictError,
    InputError,
    LedgerError,
    NotFoundError,
    UnschedulableError,
)
from depin.ledger import ESCROW_ACCOUNT, Entry, Hold, Ledger
from depin.lifecycle import end_job
from depin.limits import ALLOCATION_GRACE_S
from depin.money import format_usd, time_covered_s, usage_cost_micro
from depin.runtime.work import CycleCommit, PendingJob, PendingWork
from depin.spec import JobSpec
from depin.states import JobState
from providers import registry
from scheduler import Assignment, Code, Plan, Status, plan
from scheduler.explain import JobMetric

# A cycle claims its jobs in one statement: per-statement overhead, not rows, dominated
# when it was one per request class (SQLite, 18k jobs: 0.19 s -> 0.07 s). ``+jobs.state``
# keeps SQLite from driving the join by the state index, which would rescan the JSON per job.
# A job counts as still pending only under the hold the plan read: one lost and requeued
# meanwhile has a new hold, and adjusting the old one again would break the ledger's rule.
# (UPDATE ... FROM needs SQLite 3.33 or later; json_extract, not ->>, keeps it at that.)
_CLAIM_SQLITE = (
    "UPDATE jobs SET state = 'scheduled', plan_record_id = c.record_id, updated_at = ?, "
    "reasons_json = NULL FROM (SELECT json_extract(value, '$[0]') AS id, "
    "json_extract(value, '$[1]') AS record_id, json_extract(value, '$[2]') AS hold_id "
    "FROM json_each(?)) AS c "
    "WHERE jobs.id = c.id AND +jobs.state = 'pending' AND jobs.hold_transfer_id = c.hold_id"
)
_CLAIM_POSTGRES = (
    "UPDATE jobs SET state = 'scheduled', plan_record_id = c.record_id, updated_at = %s, "
    "reasons_json = NULL FROM unnest(%s::bigint[], %s::bigint[], %s::bigint[]) "
    "AS c(id, record_id, hold_id) "
    "WHERE jobs.id = c.id AND jobs.state = 'pending' AND jobs.hold_transfer_id = c.hold_id"
)
# Inserts of placeholders only (constants too are parameters): on PostgreSQL ``executemany``
# turns exactly that shape into a COPY.
_INSERT_RECORD = (
    "INSERT INTO plan_records (id, metric_json, reasons_json, created_at) VALUES (?, ?, ?, ?)"
)
_WAIT = "UPDATE jobs SET plan_record_id = ? WHERE id = ? AND state = 'pending'"
_INSERT_ALLOCATION = (
    "INSERT INTO allocations (id, job_id, node_id, gpus, price_micro_usd_per_gpu_hour, "
    "time_limit_s, hold_transfer_id, rtt_ms, score, state, driver_id, created_at, fence) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


@dataclass(frozen=True, slots=True)
class _Cycle:
    """What every reserve attempt of one cycle shares, read once before the first."""

    session: Session
    ledger: Ledger
    escrow_id: int
    jobs: dict[int, PendingJob]
    work: PendingWork
    result: Plan
    records: dict[int, int]  # id(metric) -> plan record id
    driver_id: str | None


class _Conflict(Exception):
    """The bulk path met a claim that came up short; fall back to job by job."""


def reserve(
    session: Session, work: PendingWork, result: Plan, *, driver_id: str | None
) -> CycleCommit:
    """Reserve every placement of ``result`` and record why the rest were not placed."""
    ledger = Ledger(session)
    ledger.lock()
    escrow_id = ledger.account(ESCROW_ACCOUNT).id
    jobs = {j.id: j for j in work.jobs}
    by_job: dict[int, list[Assignment]] = defaultdict(list)
    for a in result.placements:
        by_job[int(a.job)].append(a)  # type: ignore[call-overload]
    records = _records(session, result)
    cycle = _Cycle(session, ledger, escrow_id, jobs, work, result, records, driver_id)
    commit = CycleCommit()

    def attempt(placements: dict[int, list[Assignment]]) -> list[int] | None:
        """Reserve ``placements`` behind a savepoint; None (rolled back) on any conflict."""
        try:
            with ledger.savepoint():
                return _bulk(cycle, placements)
        except _Conflict:
            return None

    reserved = attempt(by_job)
    if reserved is not None:
        commit.reserved = reserved
    elif len(by_job) == 1:  # that one job was the conflict: nothing to retry
        commit.conflicts = 1
    else:  # someone took a job or a node since the snapshot: job by job, skipping those
        for job_id, placements in by_job.items():
            allocs = attempt({job_id: placements})
            if allocs is None:
                commit.conflicts += 1
            else:
                commit.reserved.extend(allocs)
    _record_unplaced(session, ledger, result, records, commit)
    return commit


def _records(session: Session, result: Plan) -> dict[int, int]:
    """One plan record per distinct metric (a request class shares one); id(metric) -> row id."""
    metrics: dict[int, tuple[JobMetric, Status | None]] = {}
    for key, metric in result.metrics.items():
        if id(metric) not in metrics:
            metrics[id(metric)] = (metric, result.unplaced.get(key))
    if not metrics:
        return {}
    ids = reserve_ids(session, "plan_records", len(metrics))
    stamp = db_time(session, utcnow())
    rows = [  # orjson: a 20k-job cycle writes ~1k metrics, and json.dumps costs 2x
        (record_id, _json(m.to_dict()), None if r is None else _json(r.reasons), stamp)
        for record_id, (m, r) in zip(ids, metrics.values(), strict=True)
    ]
    executemany(session, _INSERT_RECORD, rows)
    return dict(zip(metrics, ids, strict=True))


def _bulk(c: _Cycle, by_job: dict[int, list[Assignment]]) -> list[int]:
    """Claim the jobs, take the capacity, then write the holds and the allocations; raises
    _Conflict as soon as a claim comes up short (the caller's savepoint undoes the rest)."""
    if not by_job:
        return []
    now = utcnow()
    stamp = db_time(c.session, now)
    # The plan may be stale: jobs, then nodes, are claimed only as the plan saw them.
    if not _claim(c, by_job, stamp) or not _take(c, by_job):
        raise _Conflict
    # Allocation ids and hold ids are known up front, so each row can name the other.
    count = sum(len(p) for p in by_job.values())
    alloc_ids = reserve_ids(c.session, "allocations", count)
    first_hold_id = c.ledger.lock().seq + 1
    alloc_rows, entries = _entries(c, by_job, alloc_ids, first_hold_id, now, stamp)
    # Ledger entries first (allocations reference their holds), then the allocations.
    ids = c.ledger.append(entries)
    if ids[0] != first_hold_id:  # not an assert: python -O would strip it
        raise LedgerError(f"holds took ids from #{ids[0]}, not #{first_hold_id} as allocations say")
    executemany(c.session, _INSERT_ALLOCATION, alloc_rows)
    return alloc_ids


def _claim(c: _Cycle, by_job: dict[int, list[Assignment]], stamp: object) -> bool:
    """Move the jobs from pending to scheduled, each citing its plan record, in one statement;
    False if any was no longer pending under the hold the plan read."""
    job_ids = list(by_job)
    record_ids = [c.records[id(c.result.metrics[job_id])] for job_id in job_ids]
    hold_ids = [c.jobs[job_id].hold_id for job_id in job_ids]
    conn = c.session.connection()
    if conn.dialect.name == "postgresql":
        params = (stamp, job_ids, record_ids, hold_ids)
        return conn.exec_driver_sql(_CLAIM_POSTGRES, params).rowcount == len(job_ids)
    rows = _json(list(zip(job_ids, record_ids, hold_ids, strict=True)))
    return conn.exec_driver_sql(_CLAIM_SQLITE, (stamp, rows)).rowcount == len(job_ids)


def _take(c: _Cycle, by_job: dict[int, list[Assignment]]) -> bool:
    """Book the placements' GPUs, one conditional update per node at the price the plan saw;
    False if any node came up short."""
    taken: dict[int, int] = defaultdict(int)
    for placements in by_job.values():
        for a in placements:
            taken[a.node_id] += a.gpus
    price = c.work.price_micro
    return registry.take_capacity(c.session, [(n, g, price[n]) for n, g in taken.items()])


def _entries(
    c: _Cycle,
    by_job: dict[int, list[Assignment]],
    alloc_ids: list[int],
    first_hold_id: int,
    now: datetime,
    stamp: object,
) -> tuple[list[tuple[object, ...]], list[Entry]]:
    """The allocation rows and, in the same order, the ledger entries holding their price.

    A job's submission hold is adjusted to its first replica's hold at the locked price;
    each further replica holds its own share.
    """
    alloc_rows: list[tuple[object, ...]] = []
    entries: list[Entry] = []
    # Each allocation's fence token (the one its agent presents), 128 random bits: one read
    # of the OS's randomness for the whole cycle, not one per allocation.
    fences = secrets.token_bytes(16 * len(alloc_ids)).hex()
    price_text: dict[int, str] = {}  # a cycle's nodes share a handful of prices
    timeouts: dict[int, datetime] = {}  # ... and its holds a handful of time limits
    for job_id, placements in by_job.items():
        job = c.jobs[job_id]
        old: Hold | None = Hold(job.hold_id, job.account_id, c.escrow_id, job.hold_micro, job_id)
        # A replica's share of the submission hold is submission.max_cost_micro at the price
        # it was held for, so within the budget already: at the node's price only usage binds.
        share = job.hold_micro // len(placements)
        duration_ms = job.spec.max_duration_s * 1000
        for a in placements:
            price = c.work.price_micro[a.node_id]
            if price not in price_text:
                price_text[price] = format_usd(price)
            hold_micro = min(share, usage_cost_micro(price, a.gpus, duration_ms))
            limit = max(1, min(job.spec.max_duration_s, time_covered_s(hold_micro, price, a.gpus)))
            row = len(alloc_rows)
            alloc_id = alloc_ids[row]
            alloc_rows.append(
                (
                    alloc_id,
                    job_id,
                    a.node_id,
                    a.gpus,
                    price,
                    limit,
                    first_hold_id + len(entries),
                    a.rtt_ms,
                    a.score,
                    "reserved",
                    c.driver_id,
                    stamp,
                    fences[32 * row : 32 * row + 32],
                )
            )
            if limit not in timeouts:
                timeouts[limit] = now + timedelta(seconds=limit + ALLOCATION_GRACE_S)
            memo = f"job {job_id} on node {a.node_id} at {price_text[price]}/GPU-h"
            if old is not None:
                entries.append(Ledger.adjustment(old, hold_micro, alloc_id, timeouts[limit], memo))
                old = None
            else:
                entries.append(
                    Entry(
                        "hold",
                        job.account_id,
                        c.escrow_id,
                        hold_micro,
                        pending=True,
                        job_id=job_id,
                        allocation_id=alloc_id,
                        memo=memo,
                        timeout_at=timeouts[limit],
                    )
                )
    return alloc_rows, entries


def _json(value: object) -> str:
    return orjson.dumps(value).decode()


def _record_unplaced(
    s: Session, ledger: Ledger, result: Plan, records: dict[int, int], commit: CycleCommit
) -> None:
    """Jobs that wait point at their plan record; jobs that never fit end, refunded."""
    waiting = []
    for key, status in result.unplaced.items():
        job_id = int(key)  # type: ignore[call-overload]
        record_id = records[id(result.metrics[key])]
        if status.code is Code.NEVER:
            if refuse(s, ledger, job_id, record_id):
                commit.unschedulable.append(job_id)
        else:
            waiting.append((record_id, job_id))
    executemany(s, _WAIT, waiting)


def refuse(s: Session, ledger: Ledger, job_id: int, record_id: int | None) -> bool:
    """A pending job that no node can ever take ends unschedulable; its hold returns.

    Under the ledger's lock (taken first by every writer of jobs) the job's state
    read here is current.
    """
    job = s.get(Job, job_id, populate_existing=True)
    if job is None or job.state != JobState.PENDING:
        return False
    job.plan_record_id = record_id
    hold = ledger.pending_transfer(job.hold_transfer_id or 0)
    end_job(ledger, job, JobState.UNSCHEDULABLE, refund=hold)
    return True


# -- one job by hand, and what a cycle reads -----------------------------------------------


def place(s: Session, job_id: int, node_id: int, *, driver_id: str | None) -> list[int]:
    """Reserve a pending job on one chosen node (an allocation attempt); its allocation ids.

    Refused with a ``CapacityError`` when the node lacks the free GPUs (the
    conditional update and the nodes' CHECK decide, whoever races), with an
    ``UnschedulableError`` when the node could never take the job.
    """
    ledger = Ledger(s)
    ledger.lock()
    job = s.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
    if job.state != JobState.PENDING:
        raise ConflictError(f"job {job_id} is {job.state}, not pending")
    spec = JobSpec.model_validate_json(s.get_one(JobManifest, job.id).spec_json)
    if spec.replicas != 1:
        raise InputError(f"job {job_id} has {spec.replicas} replicas: place it with the scheduler")
    node = registry.get_node(s, node_id)
    if node.status != "active":
        raise CapacityError(
            f"node {node_id} is {node.status} and takes no new work: "
            "pick an active node (`depin node list`)"
        )
    attempt = plan([spec], [registry.to_offer(node, full=True)], keys=[job_id])
    if not attempt.placements:
        reasons = list(attempt.unplaced[job_id].reasons)
        raise UnschedulableError(
            f"node {node_id} can never run job {job_id}: " + "; ".join(reasons), reasons
        )
    pending = PendingJob(
        job.id, job.account_id, job.hold_transfer_id or 0, job.max_cost_micro_usd, spec
    )
    work = PendingWork([pending], None, {node_id: node.price_micro_usd_per_gpu_hour})
    result = replace(attempt, metrics={job_id: attempt.metrics[job_id]})
    allocs = reserve(s, work, result, driver_id=driver_id).reserved
    if not allocs:
        free = registry.get_node(s, node_id).gpus_free
        raise CapacityError(
            f"node {node_id} has {free} free GPU(s), job {job_id} needs {spec.resources.gpus}"
        )
    return allocs


def _parse_template(template: str, name: str) -> JobSpec:
    """A stored template (``submission.template_json``: a JSON object without the name) and
    the job's name, validated from the JSON text in one pass (pydantic's parser, not
    ``json.loads`` and a dict)."""
    return JobSpec.model_validate_json(f"{template[:-1]},{json.dumps('name')}:{json.dumps(name)}}}")


def pending_work(
    s: Session, job_ids: Sequence[int] | None, *, limit: int, nodes_version: int | None
) -> PendingWork:
    """Pending jobs (oldest first) and the fleet, read in one snapshot.

    Given the ``nodes_version`` of a snapshot the caller keeps, and if the
    fleet has not changed since, only free GPUs are read.
    """
    stmt = (
        select(
            Job.id,
            Job.name,
            Job.account_id,
            Job.hold_transfer_id,
            Job.max_cost_micro_usd,
            JobManifest.template_json,
        )
        .join(JobManifest, JobManifest.job_id == Job.id)
        .where(Job.state == JobState.PENDING)
        # A requeued job waits out its backoff.
        .where(Job.not_before.is_(None) | (Job.not_before <= utcnow()))
    )
    if job_ids is not None:
        stmt = stmt.where(Job.id.in_(list(job_ids)))
    rows = s.execute(stmt.order_by(Job.id).limit(limit)).all()
    version = registry.version(s)
    pull: frozenset[int] = frozenset()
    ray: frozenset[int] = frozenset()
    if nodes_version == version:
        offers, prices, free = None, {}, registry.free_capacity(s)
    else:
        (offers, prices), free = registry.offers_and_prices(s), None
        pull, ray = registry.agent_nodes(s, "pull"), registry.agent_nodes(s, "ray")
    templates: dict[str, JobSpec] = {}  # jobs of one template parse it once
    jobs = []
    for r in rows:
        base = templates.get(r.template_json)
        if base is None:
            base = templates[r.template_json] = _parse_template(r.template_json, r.name)
        spec = base if base.name == r.name else base.model_copy(update={"name": r.name})
        jobs.append(PendingJob(r.id, r.account_id, r.hold_transfer_id, r.max_cost_micro_usd, spec))
    return PendingWork(jobs, offers, prices, version, free, pull, ray)
