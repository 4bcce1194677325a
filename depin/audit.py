"""The audits of ``depin ledger verify`` beyond the hash chain and the balances.

- receipts: every paid allocation has a usage receipt that verifies under its
  provider's keys and speaks of that allocation, and it was paid no more than
  the receipt attests within the window the market recorded;
- holds: every open hold belongs to a pending job or an active allocation,
  and each of those has its open hold;
- capacity: every node's booked GPUs are exactly what its active allocations hold.

Each audit reads inside the caller's (read) transaction and returns problem lines.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from depin import receipts
from depin.db.models import Allocation, Job, Node, Receipt
from depin.ledger import open_holds
from depin.money import usage_cost_micro
from depin.settlement import allocation_facts, billable, billed_ms, key_finder
from depin.states import ALLOCATION_ACTIVE, JobState
from providers import registry


def audit_receipts(s: Session, market_id: str) -> list[str]:
    """Receipts verify under their providers' keys and match their allocations.

    Paid work must have a usage receipt; unpaid work needs none.
    """
    problems = []
    rows = s.execute(
        select(Allocation, Job)
        .join(Job, Job.id == Allocation.job_id)
        .where(Allocation.state.not_in(ALLOCATION_ACTIVE))  # every ended one, cancelled too
        .order_by(Allocation.id)
    ).all()
    stored: dict[tuple[int, str], str] = {
        (r.allocation_id, r.kind): r.envelope_json for r in s.execute(select(Receipt)).scalars()
    }
    keys_by_node = registry.provider_keys(s, None, active_only=False)
    for alloc, job in rows:
        find = key_finder(keys_by_node.get(alloc.node_id, {}))
        facts = allocation_facts(alloc, job, market_id)
        usage_json = stored.get((alloc.id, "usage"))
        if usage_json is None and not alloc.cost_micro_usd:
            continue  # unpaid work needs no receipt
        try:
            usage = receipts.verify_usage(usage_json, facts, find)
            cost = usage_cost_micro(
                alloc.price_micro_usd_per_gpu_hour, alloc.gpus, _billable_ms(usage, alloc)
            )
            if (alloc.cost_micro_usd or 0) > cost:
                raise receipts.ReceiptError(
                    f"allocation {alloc.id}: paid {alloc.cost_micro_usd} micro-USD, more than "
                    f"its usage receipt attests within what the market saw ({cost})"
                )
            if (alloc.id, "acceptance") in stored:
                receipts.verify(stored[(alloc.id, "acceptance")], "acceptance", facts, find)
        except receipts.ReceiptError as exc:
            problems.append(str(exc))
    return problems


def _billable_ms(usage: receipts.Usage, alloc: Allocation) -> int:
    """What settlement may have billed: the receipt's run within the claim and the outcome's
    arrival the allocation recorded (``settlement.billable``); nothing if it recorded none."""
    if alloc.claimed_at is None or alloc.seen_at is None:
        return 0
    return billed_ms(*billable(usage, alloc.claimed_at, alloc.seen_at))


def audit_holds(s: Session) -> list[str]:
    """No hold without an owner, and no owner without its hold."""
    problems = []
    open_ids = set(s.execute(open_holds()).scalars())
    owners: dict[int, str] = {}
    for job_id, hold_id in s.execute(
        select(Job.id, Job.hold_transfer_id).where(Job.state == JobState.PENDING)
    ):
        owners[hold_id] = f"pending job {job_id}"
    for alloc_id, hold_id in s.execute(
        select(Allocation.id, Allocation.hold_transfer_id).where(
            Allocation.state.in_(ALLOCATION_ACTIVE)
        )
    ):
        owners[hold_id] = f"allocation {alloc_id}"
    for hold_id, owner in owners.items():
        if hold_id not in open_ids:
            problems.append(f"{owner} has no open hold (#{hold_id}): its money is not held")
    for hold_id in sorted(open_ids - owners.keys()):
        problems.append(
            f"hold #{hold_id} is open but belongs to no pending job or running allocation"
        )
    return problems


def audit_capacity(s: Session) -> list[str]:
    """No GPU booked twice or lost: a node's booked GPUs are its active allocations'."""
    booked: dict[int, int] = {}
    for node_id, gpus in s.execute(
        select(Allocation.node_id, Allocation.gpus).where(Allocation.state.in_(ALLOCATION_ACTIVE))
    ):
        booked[node_id] = booked.get(node_id, 0) + gpus
    return [
        f"node {node_id}: {gpus - free} GPU(s) booked, allocations hold {booked.get(node_id, 0)}"
        for node_id, gpus, free in s.execute(select(Node.id, Node.gpus, Node.gpus_free))
        if gpus - free != booked.get(node_id, 0)
    ]
