"""``depin bench ledger``: allocations committed per second, a whole cycle per transaction.

An allocation commits a hold adjustment (one hash-chained ledger entry that
resolves the submission hold and holds the locked price), its share of node
capacity (a conditional update), the job's claim and the allocation row.
The baseline commits the same kind of allocation one per transaction
(``depin job place``), in the same run. The ledger is verified at the end:
chain, balances, holds and capacity.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin.bench.workload import submit_as_new_developer
from depin.config import Settings
from depin.gcpause import gc_paused
from depin.market import Marketplace
from depin.spec import JobSpec, NodeSpec
from scheduler import plan

NODE_GPUS = 8


def run(
    *,
    allocations: int = 20_000,
    cycle: int = 5_000,
    baseline: int = 500,
    database_url: str | None = None,
) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="depin-bench-"))
    market = Marketplace(Settings.from_env(home=home, database_url=database_url))
    try:
        job_ids, node_ids = _populate(market, allocations + baseline)
        ours = set(node_ids)
        batch_ids, single_ids = job_ids[:allocations], job_ids[allocations:]
        committed, commit_s, plan_s = 0, 0.0, 0.0
        for start in range(0, len(batch_ids), cycle):
            work = market.pending_work(batch_ids[start : start + cycle], limit=cycle)
            work = replace(work, offers=[o for o in work.offers if o.node_id in ours])
            t = time.perf_counter()
            result = plan(work.specs, work.offers, keys=work.job_ids, mode="fast")
            plan_s += time.perf_counter() - t
            t = time.perf_counter()
            committed += len(market.commit_plan(work, result, driver_id=None).reserved)
            commit_s += time.perf_counter() - t
        slots = [n.id for n in market.nodes() if n.id in ours for _ in range(n.gpus_free)]
        t = time.perf_counter()
        with gc_paused():
            for job_id, node_id in zip(single_ids, slots, strict=False):
                market.place(job_id, node_id)
        single_s = time.perf_counter() - t
        report = market.verify_ledger()
        return {
            "database": market.engine.dialect.name,
            "allocations": committed,
            "cycle": cycle,
            "commit_s": round(commit_s, 3),
            "allocations_per_s": round(committed / commit_s),
            "one_per_transaction_per_s": round(len(single_ids) / single_s),
            "speedup": round((committed / commit_s) / (len(single_ids) / single_s), 1),
            "plan_s": round(plan_s, 3),
            "ledger_ok": report.ok,
            "ledger_entries": report.entries,
            "problems": report.problems[:3],
        }
    finally:
        market.close()
        shutil.rmtree(home, ignore_errors=True)


def _populate(market: Marketplace, jobs: int) -> tuple[list[int], list[int]]:
    """Enough single-GPU nodes for every job, and the jobs, submitted in batches (not timed)."""
    run_id = uuid.uuid4().hex[:8]  # a --db may hold earlier runs
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
