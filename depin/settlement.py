"""Settlement: from a reservation to money paid, and what happens when work is lost.

    claim         reserved -> running; the launches a driver starts
    finish        an outcome arrives: pay what the provider's receipt attests (bounded
                  by what the market saw), return the rest, free the GPUs, end the job
                  when its last allocation has ended
    requeue       an allocation lost with its node or driver: refund it, queue the job again
    expire_holds  holds past their timeout: a job never scheduled is cancelled, an
                  allocation never settled is lost
    cancel        the owner ends a job: at once unless it runs, else once its drivers stop it
    reconcile     the periodic pass: dead drivers' work and expired holds

Every function works inside the caller's transaction, after ``Ledger.lock``.
A provider's receipt and a node's outcome are a stranger's word: a receipt
that does not verify, or claims what the market did not see, is not paid
for, and nothing in either can stop the loop that settles them.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import ColumnElement, select
from sqlalchemy.orm import Session

from depin import receipts
from depin.db.models import Allocation, Driver, Job, JobManifest, Node, Receipt, utcnow
from depin.errors import ConflictError, NotFoundError
from depin.ledger import Hold, Ledger
from depin.lifecycle import end_job
from depin.limits import (
    CANCEL_STOP_S,
    ERROR_CHARS,
    MAX_REQUEUES,
    OUTPUT_TAIL_CHARS,
    PENDING_HOLD_TIMEOUT_S,
    RECEIPT_CLOCK_SKEW_S,
    REQUEUE_BACKOFF_S,
)
from depin.money import usage_cost_micro
from depin.receipts import AllocationFacts, ReceiptSigner, Usage
from depin.runtime.work import Launch, Outcome
from depin.spec import JobSpec
from depin.states import ALLOCATION_ACTIVE, AllocationState, JobState
from providers import registry

_EXIT_CODE_RANGE = range(-255, 256)  # what a process can exit with, signals included
CANCELLED_BY_OWNER = "cancelled by its owner"


def allocation_facts(alloc: Allocation, job: Job, market_id: str) -> AllocationFacts:
    """What both of an allocation's receipts must agree with."""
    return AllocationFacts(
        allocation_id=alloc.id,
        job_id=job.id,
        node_id=alloc.node_id,
        gpus=alloc.gpus,
        price_micro_usd_per_gpu_hour=alloc.price_micro_usd_per_gpu_hour,
        manifest_digest=job.manifest_digest,
        market=market_id,
        fence=alloc.fence,
    )


def key_finder(keys: dict[str, Ed25519PublicKey]) -> Callable[[str], list[Ed25519PublicKey]]:
    return lambda key_id: [keys[key_id]] if key_id in keys else []


def specs_of(s: Session, job_ids: list[int]) -> dict[int, JobSpec]:
    """The manifests of ``job_ids``, in one query; every job has one."""
    rows = s.execute(
        select(JobManifest.job_id, JobManifest.spec_json).where(JobManifest.job_id.in_(job_ids))
    ).all()
    specs = {job_id: JobSpec.model_validate_json(text) for job_id, text in rows}
    missing = set(job_ids) - specs.keys()
    assert not missing, f"jobs without a manifest: {sorted(missing)}"
    return specs


# -- claim ---------------------------------------------------------------------------------


def claim(
    s: Session,
    *,
    driver_id: str,
    market_id: str,
    keys_dir: Path,
    limit: int,
    now: datetime,
    ray_agents_only: bool = False,
) -> list[Launch]:
    """Mark reserved allocations running and return what to launch.

    A driver launches what it reserved itself and what was reserved for any
    launcher (``scheduler run --no-launch``, ``job place``). The claim's time
    is the start of what the market will pay for.
    """
    Ledger(s).lock()  # as every writer of allocations does: a cancel is ordered before or after
    rows = s.execute(
        select(Allocation, Job)
        .join(Job, Job.id == Allocation.job_id)
        .join(Node, Node.id == Allocation.node_id)
        .where(
            Allocation.state == AllocationState.RESERVED,
            (Allocation.driver_id == driver_id) | Allocation.driver_id.is_(None),
            # A pull agent's node takes its work over HTTP (``depin.agents``), not from Ray;
            # a server for strangers launches only on its operator's Ray-mode agents' nodes.
            (Node.agent == "ray")
            if ray_agents_only
            else Node.agent.is_(None) | (Node.agent != "pull"),
        )
        .order_by(Allocation.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    specs = specs_of(s, [job.id for _, job in rows])
    keys = registry.provider_keys(s, [alloc.node_id for alloc, _ in rows], active_only=True)
    launches = []
    for alloc, job in rows:
        alloc.state, alloc.started_at, alloc.driver_id = AllocationState.RUNNING, now, driver_id
        alloc.claimed_at = now
        job.state, job.updated_at = JobState.RUNNING, now
        signer = ReceiptSigner(
            allocation_facts(alloc, job, market_id),
            tuple(keys.get(alloc.node_id, {})),
            str(keys_dir),
        )
        launches.append(
            Launch(
                alloc.id,
                job.id,
                job.name,
                alloc.node_id,
                alloc.gpus,
                specs[job.id].command,
                alloc.time_limit_s,
                signer,
            )
        )
    return launches


# -- finish --------------------------------------------------------------------------------


def finish(s: Session, outcome: Outcome, *, market_id: str, now: datetime) -> None:
    """Settle an allocation that ended: pay the used part, return the rest, free the GPUs.

    A lost allocation (its node or worker died) pays nothing; a single-replica
    job is queued again. Finishing twice is a no-op: only a running allocation ends.
    """
    ledger = Ledger(s)
    ledger.lock()
    alloc = s.get(Allocation, outcome.allocation_id, populate_existing=True)
    if alloc is None or alloc.state != AllocationState.RUNNING:
        return
    job = s.get(Job, alloc.job_id, populate_existing=True)
    assert job is not None
    spec = specs_of(s, [job.id])[job.id]
    if outcome.lost and spec.replicas == 1 and job.cancel_requested_at is None:
        requeue(s, ledger, alloc, job, clean_text(outcome.error) or "node lost", spec)
        registry.record_outcome(s, alloc.node_id, node_fault=True)
        return
    paid = _settle(s, ledger, alloc, job, outcome, market_id, now)
    # The node's record: a job's own failure is not the node's; a loss, a run the node could
    # not start, or one it would not sign for is.
    fault = outcome.lost or outcome.node_fault or not paid
    registry.record_outcome(s, alloc.node_id, node_fault=fault)
    _end_if_done(s, ledger, job, spec)


def _settle(
    s: Session,
    ledger: Ledger,
    alloc: Allocation,
    job: Job,
    outcome: Outcome,
    market_id: str,
    now: datetime,
) -> bool:
    """Pay what the usage receipt attests within what the market saw; free the GPUs.

    A missing or invalid receipt ends the allocation unpaid and returns the
    whole hold; the hold bounds any bill. True when the receipt verified.
    """
    hold = ledger.pending_transfer(alloc.hold_transfer_id or 0)
    claimed_at = alloc.claimed_at or alloc.started_at or now
    alloc.seen_at = now
    started, ended, used, verified = claimed_at, now, 0, False
    error = clean_text(outcome.error)
    exit_code = outcome.exit_code if _is_exit_code(outcome.exit_code) else None
    if not outcome.lost:
        facts = allocation_facts(alloc, job, market_id)
        keys = registry.provider_keys(s, [alloc.node_id], active_only=True).get(alloc.node_id, {})
        try:
            usage_json = clean_text(outcome.usage_json)  # a node's word: text, or nothing
            usage = receipts.verify_usage(usage_json, facts, key_finder(keys))
        except receipts.ReceiptError as exc:
            error = f"{error + '; ' if error else ''}provider not paid: {exc}"
        else:
            # A cancelled run is paid until its node had time to stop it, however long after
            # that it went on (or reported).
            seen = now
            if job.cancel_requested_at is not None:
                stop_by = job.cancel_requested_at + timedelta(seconds=CANCEL_STOP_S)
                seen = max(claimed_at, min(now, stop_by))
            started, ended = billable(usage, claimed_at, seen)
            price, gpus = alloc.price_micro_usd_per_gpu_hour, alloc.gpus
            cost = usage_cost_micro(price, gpus, billed_ms(started, ended))
            used = min(hold.amount_micro_usd, cost)
            alloc.dispute = _dispute(usage, claimed_at, seen, started, ended)
            _store_receipts(s, alloc.id, usage_json, outcome, usage.key_id, facts, keys)
            verified = True
    _pay(s, ledger, hold, used, alloc, job)
    registry.release_capacity(s, alloc.node_id, alloc.gpus)
    if outcome.lost:
        alloc.state = AllocationState.LOST
    elif job.cancel_requested_at is not None:
        alloc.state = AllocationState.CANCELLED
    elif exit_code == 0 and outcome.exit_code is not None:
        alloc.state = AllocationState.SUCCEEDED
    else:
        alloc.state = AllocationState.FAILED
    alloc.started_at, alloc.ended_at = started, ended
    alloc.exit_code, alloc.error = exit_code, clean_text(error)[:ERROR_CHARS] or None
    alloc.output_tail = clean_text(outcome.output_tail)[-OUTPUT_TAIL_CHARS:]
    alloc.cost_micro_usd = used
    return verified


def billable(usage: Usage, claimed_at: datetime, seen_at: datetime) -> tuple[datetime, datetime]:
    """The part of a receipt's run the market will pay for: what lies within the claim to
    the outcome's arrival, widened by the clock-skew allowance (empty: start == end)."""
    skew = timedelta(seconds=RECEIPT_CLOCK_SKEW_S)
    start = max(usage.started_at, claimed_at - skew)
    end = max(start, min(usage.ended_at, seen_at + skew))
    return start, end


def _dispute(
    usage: Usage, claimed_at: datetime, seen_at: datetime, start: datetime, end: datetime
) -> str | None:
    if (start, end) == (usage.started_at, usage.ended_at):
        return None
    return (
        f"usage receipt claims {billed_ms(usage.started_at, usage.ended_at) / 1000:.3f} s "
        f"({usage.started_at.isoformat()} to {usage.ended_at.isoformat()}); the market saw "
        f"{claimed_at.isoformat()} to {seen_at.isoformat()} (±{RECEIPT_CLOCK_SKEW_S} s): "
        f"paid the overlap, {billed_ms(start, end) / 1000:.3f} s"
    )[:ERROR_CHARS]


def billed_ms(start: datetime, end: datetime) -> int:
    """Whole milliseconds from ``start`` to ``end`` (none if it runs backwards)."""
    return max(0, (end - start) // timedelta(milliseconds=1))


def _pay(s: Session, ledger: Ledger, hold: Hold, used: int, alloc: Allocation, job: Job) -> None:
    """Post the used part of the hold and pay it to the provider; or return all of it."""
    if not used:
        ledger.void(hold, memo=f"job {job.id}: allocation {alloc.id} used nothing")
        return
    ledger.post(hold, used, memo=f"job {job.id}: allocation {alloc.id} on node {alloc.node_id}")
    node = registry.get_node(s, alloc.node_id)
    ledger.transfer(
        hold.credit_account_id,
        node.provider_id,
        used,
        "payout",
        job_id=job.id,
        allocation_id=alloc.id,
        memo=f"job {job.id} on node {node.id}",
    )


def _is_exit_code(value: object) -> bool:
    return type(value) is int and value in _EXIT_CODE_RANGE


def clean_text(value: object) -> str:
    """A node's free text as a string any database stores: '' for none or for anything that is
    not text; lone surrogates and NUL (which PostgreSQL's text refuses) replaced."""
    if not isinstance(value, str):
        return ""
    return value.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _store_receipts(
    s: Session,
    allocation_id: int,
    usage_json: str,
    outcome: Outcome,
    usage_key: str,
    facts: AllocationFacts,
    keys: dict[str, Ed25519PublicKey],
) -> None:
    """Keep the verified usage receipt, and the acceptance when it verifies too."""
    s.add(
        Receipt(
            allocation_id=allocation_id,
            kind="usage",
            key_id=usage_key,
            envelope_json=usage_json,
        )
    )
    try:
        acceptance = clean_text(outcome.acceptance_json)
        claims = receipts.verify(acceptance, "acceptance", facts, key_finder(keys))
    except receipts.ReceiptError:
        return
    s.add(
        Receipt(
            allocation_id=allocation_id,
            kind="acceptance",
            key_id=claims["key_id"],
            envelope_json=acceptance,
        )
    )


def _end_if_done(s: Session, ledger: Ledger, job: Job, spec: JobSpec) -> None:
    """A job ends when its last allocation does: succeeded only if every replica did."""
    s.flush()
    rows = s.execute(
        select(Allocation.state, Allocation.error)
        .where(Allocation.job_id == job.id)
        .order_by(Allocation.id)  # the last attempt decides a single-replica job
    ).all()
    states = [AllocationState(state) for state, _ in rows]
    if any(state.active for state in states):
        return
    reasons: list[str] = []
    if job.cancel_requested_at is not None:
        end_job(ledger, job, JobState.CANCELLED, [CANCELLED_BY_OWNER])
        return
    if spec.replicas == 1:
        final = JobState.SUCCEEDED if states[-1] is AllocationState.SUCCEEDED else JobState.FAILED
    else:
        every = all(state is AllocationState.SUCCEEDED for state in states)
        final = JobState.SUCCEEDED if every else JobState.FAILED
        lost = next((e for state, e in rows if state == AllocationState.LOST), None)
        if final is JobState.FAILED and lost is not None:
            reasons = [f"a replica was lost ({lost}); replicas are all or none"]
    end_job(ledger, job, final, reasons)


# -- cancelling ----------------------------------------------------------------------------


def cancel(s: Session, job_id: int, *, now: datetime) -> None:
    """End a job its owner no longer wants: refund what it holds, free what it reserved.

    A pending or only reserved job ends cancelled at once. Work already running
    is the node's to stop: the job is marked, its drivers stop it (paying for
    the time it ran), and it ends cancelled when its last allocation does.
    """
    ledger = Ledger(s)
    ledger.lock()
    job = s.get(Job, job_id, populate_existing=True)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
    if JobState(job.state).terminal:
        raise ConflictError(f"job {job_id} has already ended ({job.state})")
    if job.state == JobState.PENDING:
        hold = ledger.pending_transfer(job.hold_transfer_id or 0)
        end_job(ledger, job, JobState.CANCELLED, [CANCELLED_BY_OWNER], refund=hold)
        return
    active = s.execute(
        select(Allocation).where(
            Allocation.job_id == job.id, Allocation.state.in_(ALLOCATION_ACTIVE)
        )
    ).scalars()
    running = 0
    for alloc in active:
        if alloc.state == AllocationState.RUNNING:
            running += 1
            continue
        ledger.void(
            ledger.pending_transfer(alloc.hold_transfer_id or 0),
            memo=f"job {job.id}: allocation {alloc.id} {CANCELLED_BY_OWNER}",
        )
        registry.release_capacity(s, alloc.node_id, alloc.gpus)
        alloc.state, alloc.ended_at = AllocationState.CANCELLED, now
    job.cancel_requested_at = job.cancel_requested_at or now
    if not running:
        end_job(ledger, job, JobState.CANCELLED, [CANCELLED_BY_OWNER])


def cancellations(s: Session, driver_id: str) -> list[int]:
    """The running allocations of ``driver_id`` whose jobs their owners cancelled."""
    return cancelled_running(s, Allocation.driver_id == driver_id)


def cancelled_running(s: Session, where: ColumnElement[bool]) -> list[int]:
    """Running allocations (of those ``where`` picks) whose jobs their owners cancelled."""
    return list(
        s.execute(
            select(Allocation.id)
            .join(Job, Job.id == Allocation.job_id)
            .where(
                where,
                Allocation.state == AllocationState.RUNNING,
                Job.cancel_requested_at.is_not(None),
            )
        ).scalars()
    )


# -- lost work -----------------------------------------------------------------------------


def requeue(
    s: Session,
    ledger: Ledger,
    alloc: Allocation,
    job: Job,
    reason: str,
    spec: JobSpec | None = None,
) -> None:
    """An allocation lost with its node or driver: free it, refund it, queue the job again.

    Only a single-replica job is queued again. Replicas are all or none, so a
    multi-replica job that loses one fails once its last replica has ended;
    each lost replica's own hold is voided, none is opened.
    """
    hold = ledger.pending_transfer(alloc.hold_transfer_id or 0)
    ledger.void(hold, memo=f"job {job.id}: allocation {alloc.id} lost ({reason})"[:200])
    registry.release_capacity(s, alloc.node_id, alloc.gpus)
    now = utcnow()
    alloc.state, alloc.ended_at, alloc.error = AllocationState.LOST, now, reason[:ERROR_CHARS]
    spec = spec or specs_of(s, [job.id])[job.id]
    if spec.replicas > 1 or job.cancel_requested_at is not None:
        _end_if_done(s, ledger, job, spec)
        return
    job.attempts += 1
    if job.attempts > MAX_REQUEUES:
        why = f"{reason}; not requeued: lost {job.attempts} times (at most {MAX_REQUEUES} retries)"
        end_job(ledger, job, JobState.FAILED, [why])
        return
    if ledger.balance(job.account_id).available < job.max_cost_micro_usd:
        why = f"{reason}; not requeued: the balance no longer covers the hold"
        end_job(ledger, job, JobState.FAILED, [why])
        return
    job.hold_transfer_id = ledger.transfer(
        job.account_id,
        hold.credit_account_id,
        job.max_cost_micro_usd,
        "hold",
        pending=True,
        job_id=job.id,
        memo=f"job {job.id}: requeued after {reason}"[:200],
        timeout_at=now + timedelta(seconds=PENDING_HOLD_TIMEOUT_S),
    )
    job.state, job.updated_at, job.plan_record_id = JobState.PENDING, now, None
    job.not_before = now + timedelta(seconds=requeue_backoff_s(job.attempts))


def requeue_backoff_s(attempt: int) -> float:
    """How long a job lost ``attempt`` times waits before it is planned again: the first
    retry at once (a node failed, most likely not the job), then 1 s, 2 s ..."""
    return 0.0 if attempt <= 1 else REQUEUE_BACKOFF_S * 2 ** (attempt - 2)


def expire_holds(s: Session, ledger: Ledger, now: datetime) -> list[int]:
    """Void holds past their timeout; returns the allocations that were given up on.

    A job's submission hold times out when it was never scheduled: the job is
    cancelled and refunded. An allocation's hold times out when its work ran
    an hour past its time limit without being settled: it is treated as lost.
    """
    lost = []
    for hold in ledger.expired_holds(now):
        alloc = s.get(Allocation, hold.allocation_id) if hold.allocation_id else None
        job = s.get(Job, hold.job_id) if hold.job_id else None
        if alloc is not None and job is not None and alloc.state in ALLOCATION_ACTIVE:
            requeue(s, ledger, alloc, job, "hold timed out")
            lost.append(alloc.id)
        elif job is not None and job.state == JobState.PENDING and job.hold_transfer_id == hold.id:
            why = "not scheduled before its hold timed out; hold returned"
            end_job(ledger, job, JobState.CANCELLED, [why], refund=hold)
        else:
            ledger.void(hold, memo=f"hold #{hold.id} timed out")
    return lost


def reconcile(s: Session, *, now: datetime, driver_cutoff: datetime) -> list[int]:
    """Requeue the work of drivers silent since ``driver_cutoff`` and void expired holds;
    returns the allocations given up on."""
    ledger = Ledger(s)
    ledger.lock()
    live = select(Driver.id).where(Driver.heartbeat_at >= driver_cutoff)
    orphans = (
        s.execute(
            select(Allocation).where(
                Allocation.state.in_(ALLOCATION_ACTIVE),
                Allocation.driver_id.is_not(None),
                Allocation.driver_id.not_in(live),
                # A pull agent's allocation lives with its node's heartbeats, not a driver's.
                Allocation.node_id.not_in(select(Node.id).where(Node.agent == "pull")),
            )
        )
        .scalars()
        .all()
    )
    for alloc in orphans:
        job = s.get(Job, alloc.job_id)
        assert job is not None
        requeue(s, ledger, alloc, job, f"driver {alloc.driver_id} stopped")
    s.execute(Driver.__table__.delete().where(Driver.heartbeat_at < driver_cutoff))
    return [a.id for a in orphans] + expire_holds(s, ledger, now)
