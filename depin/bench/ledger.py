"""``depin bench ledger``: allocations committed per second, a whole cycle per transaction.

Both sides commit through the same call, ``Marketplace.commit_plan``, and time
nothing else: the batched side a cycle of ``cycle`` allocations per
transaction, the baseline one allocation per transaction, in the same run on
the same database. Per allocation each side does the same work: a plan record
of its own (its explanation), the job's claim, its share of node capacity (a
conditional update), one hash-chained ledger entry that adjusts the
submission hold to the locked price, and the allocation row; per transaction,
the ledger head's lock and the commit. Neither side's timer covers reading
the jobs, parsing their specs or planning: both read and plan the same way, a
cycle at a time, before the clock starts, and the baseline then commits its
cycle's plan one job at a time. (A real cycle shares one plan record among the
jobs of a request class, and commits faster for it; here every job has its
own on both sides.) Each side reports the transactions and plan records it
wrote, counted in the database. The ledger is verified at the end: chain,
balances, holds and capacity. ``--db``: see ``scratch.py``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from copy import copy
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from depin.bench.scratch import scratch_database, temporary_home
from depin.bench.workload import submit_as_new_developer
from depin.config import Settings
from depin.market import Marketplace
from depin.runtime.work import PendingWork
from depin.spec import JobSpec, NodeSpec
from scheduler import Plan, plan

NODE_GPUS = 8


@dataclass(slots=True)
class Side:
    """What one side committed, and the time its commits took (nothing else is timed)."""

    allocations: int = 0
    transactions: int = 0
    plan_records: int = 0
    commit_s: float = 0.0
    read_and_plan_s: float = 0.0  # not in the rate: the same work on both sides

    def figures(self) -> dict[str, Any]:
        return {
            "allocations": self.allocations,
            "transactions": self.transactions,
            "plan_records": self.plan_records,
            "commit_s": round(self.commit_s, 3),
            "allocations_per_s": round(self.allocations / self.commit_s),
            "read_and_plan_s": round(self.read_and_plan_s, 3),
        }


def run(
    *,
    allocations: int = 20_000,
    cycle: int = 5_000,
    baseline: int = 500,
    database_url: str | None = None,
) -> dict[str, Any]:
    with scratch_database(database_url) as db, temporary_home() as home:
        market = Marketplace(Settings.from_env(home=home, database_url=db.url))
        try:
            job_ids, node_ids = _populate(market, allocations + baseline)
            ours = set(node_ids)
            batched = commit(
                market, job_ids[:allocations], ours, cycle=cycle, per_transaction=cycle
            )
            single = commit(market, job_ids[allocations:], ours, cycle=cycle, per_transaction=1)
            report = market.verify_ledger()
        finally:
            market.close()
    rate, baseline_rate = (
        batched.allocations / batched.commit_s,
        single.allocations / single.commit_s,
    )
    return {
        "database": db.description,
        "cycle": cycle,
        "allocations": batched.allocations,
        "allocations_per_s": round(rate),
        "one_per_transaction_per_s": round(baseline_rate),
        "speedup": round(rate / baseline_rate, 1),
        "batched": batched.figures(),
        "one_per_transaction": single.figures(),
        "ledger_ok": report.ok,
        "ledger_entries": report.entries,
        "problems": report.problems[:3],
    }


def commit(
    market: Marketplace, job_ids: list[int], nodes: set[int], *, cycle: int, per_transaction: int
) -> Side:
    """Read and plan ``job_ids`` a cycle at a time on ``nodes`` (not timed), then commit each
    cycle's plan ``per_transaction`` jobs at a time (timed)."""
    side = Side()
    records_before = _count(market, "plan_records")
    for start in range(0, len(job_ids), cycle):
        t = time.perf_counter()
        work = market.pending_work(job_ids[start : start + cycle], limit=cycle)
        work = replace(work, offers=[o for o in work.offers or () if o.node_id in nodes])
        result = plan(work.specs, work.offers, keys=work.job_ids, mode="fast")
        side.read_and_plan_s += time.perf_counter() - t
        for part_work, part_plan in _parts(work, result, per_transaction):
            t = time.perf_counter()
            done = market.commit_plan(part_work, part_plan, driver_id=None)
            side.commit_s += time.perf_counter() - t
            side.allocations += len(done.reserved)
            side.transactions += 1
    side.plan_records = _count(market, "plan_records") - records_before
    return side


def _parts(work: PendingWork, result: Plan, size: int) -> Iterator[tuple[PendingWork, Plan]]:
    """``work`` and its plan in parts of ``size`` jobs, each job with a metric (so a plan
    record) of its own: what a part commits depends only on its own jobs."""
    by_job: dict[int, list[Any]] = {}
    for a in result.placements:
        by_job.setdefault(int(a.job), []).append(a)  # type: ignore[call-overload]
    for start in range(0, len(work.jobs), size):
        jobs = work.jobs[start : start + size]
        keys = [j.id for j in jobs]
        yield (
            replace(work, jobs=jobs),
            replace(
                result,
                placements=[a for k in keys for a in by_job.get(k, ())],
                unplaced={k: result.unplaced[k] for k in keys if k in result.unplaced},
                metrics={k: copy(result.metrics[k]) for k in keys},
            ),
        )


def _count(market: Marketplace, table: str) -> int:
    with market.engine.connect() as conn:
        return int(conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def _populate(market: Marketplace, jobs: int) -> tuple[list[int], list[int]]:
    """Enough single-GPU nodes for every job, and the jobs, submitted in batches (not timed)."""
    run_id = uuid.uuid4().hex[:8]  # a SQLite --db may hold earlier runs
    provider = f"bench-provider-{run_id}"
    market.create_account(provider, Ed25519PrivateKey.generate().public_key(), kind="provider")
    nodes = -(-jobs // NODE_GPUS) + 1
    node_ids = market.add_nodes(
        [
            NodeSpec(
                provider=provider,
                gpu_model="L4",
                gpus=NODE_GPUS,
                price_usd_per_gpu_hour=Decimal("0.50"),
                lat=50.0 + (i % 100) / 100,
                lon=8.0 + (i // 100) / 100,
                tier="edge",
                region="eu-central",
                network="fiber",
                name=f"n{i}",
            )
            for i in range(nodes)
        ]
    )
    spec = JobSpec.model_validate(
        {
            "name": "bench",
            "command": ["true"],
            "resources": {"gpus": 1, "gpu_models": ["L4"]},
            "max_duration_s": 600,
        }
    )
    specs = [spec.model_copy(update={"name": f"bench-{i}"}) for i in range(jobs)]
    return submit_as_new_developer(market, specs, run_id), node_ids
