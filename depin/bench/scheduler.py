"""``depin bench scheduler``: decision latency, batch throughput, quality, and ClassAds.

Every figure is measured in this process on a synthetic but realistic fleet
(``providers.fleet``) and workload (``depin.bench.workload``); ratios are taken
against baselines run in the same process, since the machine is shared. Quality
is judged by an exact model that shares no code with ``scheduler/``
(``depin.bench.exact``), on an instance small enough for it to prove optimal.
"""

from __future__ import annotations

import gc
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin.bench import exact
from depin.bench.scratch import scratch_database
from depin.bench.workload import (
    WORKLOADS,
    submit_as_new_developer,
    workload_jobs,
)
from depin.config import Settings
from depin.gcpause import gc_paused
from depin.market import Marketplace
from depin.runtime.cycle import Scheduled, schedule
from depin.runtime.work import PendingWork
from depin.spec import JobSpec
from providers.catalog import lookup
from providers.fleet import SyntheticNode, synthetic_nodes
from scheduler import Offer, Plan, Snapshot, admit, plan
from scheduler.feasibility import evaluate
from scheduler.request import Request
from scheduler.sparse import feasible_counts as count_feasible
from scheduler.status import Code

Progress = Callable[[str], None]


def offers_of(nodes: list[SyntheticNode]) -> list[Offer]:
    """The scheduler's view of a synthetic fleet (node ids 1..n)."""
    return [
        Offer(
            node_id=i + 1,
            gpu_model=n.gpu_model,
            gpus_free=n.gpus,
            vram_gib=lookup(n.gpu_model).memory_gib,
            price_usd_per_gpu_hour=float(n.price_usd_per_gpu_hour),
            lat=n.lat,
            lon=n.lon,
            tier=n.tier,
            region=n.region,
            network=n.network,
            reliability=n.reliability,
            accelerator=lookup(n.gpu_model).kind,
            gpus_total=n.gpus,
        )
        for i, n in enumerate(nodes)
    ]


# -- single-job decision latency, on a busy fleet -----------------------------------------------


def single_job_latency(
    nodes: int, *, workload: str = "template", decisions: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """One job at a time against a fleet a batch has already filled, as a scheduler placing
    a stream would: the batch (as many jobs as nodes) is planned and booked first, and
    every decision sees what it left."""
    snap = Snapshot(offers_of(fleet_of(workload, nodes, seed)))
    fill = workload_jobs(workload, nodes, seed=seed + 3)
    booked = plan(fill, snap, keys=list(range(len(fill))))
    if booked.placements:
        rows = snap.rows_of([a.node_id for a in booked.placements])
        taken, which = np.unique(rows, return_inverse=True)
        gpus = np.array([a.gpus for a in booked.placements])
        snap.take_many(taken, np.bincount(which, weights=gpus).astype(np.int32))
    busy = 1.0 - float(snap.gpus_free.sum()) / max(float(snap.gpus_total.sum()), 1.0)
    jobs = workload_jobs(workload, decisions, seed=seed + 1)
    for j in jobs[:50]:  # warm caches and imports; not measured
        plan([j], snap, keys=[0])
    times, refused = [], []
    placed = per_job = 0
    for i, spec in enumerate(jobs):  # plan() leaves the snapshot as it was
        t = time.perf_counter()
        result = plan([spec], snap, keys=[i])
        times.append(time.perf_counter() - t)
        placed += bool(result.placements)
        per_job += bool(result.work)
        status = result.unplaced.get(i)
        refused.append(status is not None and status.code == Code.NEVER)
    ms, never = np.array(times) * 1000, np.array(refused)
    # A job no node could ever take is refused at submission, with suggestions (a pass over
    # the fleet per constraint): the loop never decides it, so it is timed on its own too.
    fits = ms[~never]
    return {
        "workload": workload,
        "nodes": nodes,
        "classes": snap.classes,
        "cells": snap.cells,
        "busy_gpus_pct": round(100 * busy, 1),
        "decisions": decisions,
        "placed": placed,
        "per_job_path": per_job,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
        "fitting_p50_ms": round(float(np.percentile(fits, 50)), 3) if len(fits) else None,
        "fitting_p99_ms": round(float(np.percentile(fits, 99)), 3) if len(fits) else None,
        "never_fit": int(never.sum()),
        "never_fit_p50_ms": round(float(np.percentile(ms[never], 50)), 3) if never.any() else None,
    }


# -- batch throughput, with the commit to the ledger -------------------------------------------


def batch_throughput(
    *,
    nodes: int,
    jobs: int,
    seed: int = 0,
    database_url: str | None = None,
    mode: str = "auto",
    workload: str = "template",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """One scheduling cycle over ``jobs`` pending jobs of ``workload`` on ``nodes`` nodes:
    read the pending jobs, plan, commit, each timed; their sum is the cycle.

    As ``depin.runtime.loop.Driver`` does, the fleet is read once beforehand and
    kept: a cycle reads the jobs and the fleet's free GPUs. The fleet's own read
    is reported apart (``fleet_read_s``).
    """
    say = progress or (lambda _msg: None)
    home = Path(tempfile.mkdtemp(prefix="depin-bench-"))
    try:
        with scratch_database(database_url) as db:
            market = Marketplace(Settings.from_env(home=home, database_url=db.url))
            try:
                say(
                    f"{workload} workload: registering {nodes} nodes and submitting {jobs} "
                    "signed jobs (not timed)"
                )
                job_ids = _populate(market, nodes, jobs, seed, workload)
                return {"database": db.description, **_cycle(market, job_ids, workload, mode)}
            finally:
                market.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _cycle(market: Marketplace, job_ids: list[int], workload: str, mode: str) -> dict[str, Any]:
    # Warm what a running scheduler has warm: imports, OR-Tools, the compiled per-job scan.
    sample = workload_jobs(workload, 200, seed=99)
    plan(sample, offers_of(fleet_of(workload, 100, seed=99)), mode=mode)
    gc.collect()
    t = time.perf_counter()
    fleet = market.pending_work([], limit=1)
    assert fleet.offers is not None
    snap = Snapshot(fleet.offers)
    fleet_read_s = time.perf_counter() - t
    # As the driver's cycle: the collector is off from the read to the commit and the
    # batch is freed inside; the young collection that is owed afterwards is timed too.
    with gc_paused():
        timed = _read_plan_commit(market, job_ids, snap, fleet, mode)
    t = time.perf_counter()
    gc.collect(0)
    gc_s = time.perf_counter() - t
    read_s, done = timed
    cycle_s = read_s + done.plan_s + done.commit_s + gc_s
    commit = done.commit
    verified = market.verify_ledger()
    placed = len(commit.reserved)
    return {
        "workload": workload,
        "nodes": snap.size,
        "jobs": len(job_ids),
        "classes": snap.classes,
        "cells": snap.cells,
        "mode": done.mode,
        "placed": placed,
        "fleet_read_s": round(fleet_read_s, 3),
        "read_s": round(read_s, 3),
        "plan_s": round(done.plan_s, 3),
        "commit_s": round(done.commit_s, 3),
        "gc_s": round(gc_s, 3),
        "cycle_s": round(cycle_s, 3),
        "placements_per_s": round(placed / cycle_s),
        "plan_placements_per_s": round(placed / done.plan_s) if done.plan_s else None,
        "plan_work": done.work,
        "conflicts": commit.conflicts,
        "ledger_ok": verified.ok,
        "ledger_entries": verified.entries,
    }


def _read_plan_commit(
    market: Marketplace, job_ids: list[int], snap: Snapshot, fleet: PendingWork, mode: str
) -> tuple[float, Scheduled]:
    t = time.perf_counter()
    work = market.pending_work(job_ids, limit=len(job_ids), nodes_version=fleet.nodes_version)
    assert work.free is not None, "the fleet changed between the two reads"
    snap.set_free(*work.free)
    work = replace(work, price_micro=fleet.price_micro)
    read_s = time.perf_counter() - t
    return read_s, schedule(market, work, snap, mode=mode, driver_id=None)


def fleet_of(workload: str, nodes: int, seed: int) -> list[SyntheticNode]:
    """The fleet a workload runs on: the distinct one prices every node on its own."""
    return synthetic_nodes(nodes, seed=seed, distinct_prices=workload == "distinct")


def _populate(market: Marketplace, nodes: int, jobs: int, seed: int, workload: str) -> list[int]:
    run = uuid.uuid4().hex[:8]  # a --db may hold earlier runs: names of this one are fresh
    fleet = [replace(n, provider=f"{n.provider}-{run}") for n in fleet_of(workload, nodes, seed)]
    for provider in sorted({n.provider for n in fleet}):
        market.create_account(provider, Ed25519PrivateKey.generate().public_key(), kind="provider")
    market.add_nodes([n.spec() for n in fleet])
    # Jobs no node could ever take are refused at submission; draw until there are enough.
    snap = Snapshot(market.offers())
    specs: list[JobSpec] = []
    draw = seed + 1
    while len(specs) < jobs:
        candidates = workload_jobs(workload, jobs, seed=draw)
        specs += [s for s in candidates if admit(s, snap).ok][: jobs - len(specs)]
        draw += 1000
    return submit_as_new_developer(market, specs, run)


# -- quality against an exact model that shares no code with the scheduler --------------------

# The exact model (``depin.bench.exact``) is too big at 10k nodes x 20k jobs: on two cores
# it proves a 500 x 1000 instance optimal in seconds, 1000 x 2000 not within 40 s.
QUALITY_NODES = 500
QUALITY_JOBS = 1000
EXACT_TIME_LIMIT_S = 12.0
# The smallest instance judged again when the exact model cannot prove its optimum.
MIN_PROVEN_JOBS = 100
# The reference's row names its instance: the CLI's table title does not.
EXACT = "exact (CP-SAT, {nodes} nodes x {jobs} jobs)"
UNPROVEN = "CP-SAT best found, NOT proven optimal ({nodes} x {jobs})"
STRATEGIES: dict[str, dict[str, Any]] = {
    "plain greedy": {"mode": "fast", "regret": False, "repair": False, "per_job": False},
    "regret greedy": {"mode": "fast", "repair": False, "per_job": False},
    "fast (regret + repair)": {"mode": "fast", "per_job": False},
    "optimal (flow over cells)": {"mode": "optimal", "per_job": False},
    "per-job (scan, regret + repair)": {"mode": "fast", "per_job": True},
    "per-job optimal (+ a flow per GPU size)": {"mode": "optimal", "per_job": True},
}


def quality(
    *,
    nodes: int,
    jobs: int,
    seed: int = 0,
    single_gpu: bool = False,
    workload: str = "template",
    time_limit_s: float = EXACT_TIME_LIMIT_S,
) -> dict[str, Any]:
    """Cost-only objective: each strategy's plan judged against an exact job × node model.

    The reference (``depin.bench.exact``) sees the fleet and the jobs as plain
    values and checks every plan's placements again with its own constraints.
    """
    fleet = fleet_of(workload, nodes, seed)
    specs = workload_jobs(workload, jobs, seed=seed + 1, cost_only=True, single_gpu=single_gpu)
    ref_jobs, ref_nodes = [exact.job_of(s) for s in specs], exact.nodes_of_fleet(fleet)
    reference = exact.solve(ref_jobs, ref_nodes, time_limit_s=time_limit_s)
    runs: dict[str, dict[str, Any]] = {}
    for name, kwargs in STRATEGIES.items():
        snap = Snapshot(offers_of(fleet))
        t = time.perf_counter()
        result = plan(specs, snap, keys=list(range(len(specs))), **kwargs)
        seconds = round(time.perf_counter() - t, 3)
        judged = exact.judge(ref_jobs, ref_nodes, assignment_of(result), reference)
        runs[name] = {**judged, "seconds": seconds}
    row = (EXACT if reference.proven_optimal else UNPROVEN).format(nodes=nodes, jobs=jobs)
    own = exact.judge(ref_jobs, ref_nodes, reference.assignment, reference)
    runs[row] = {**own, "seconds": reference.seconds}
    return {
        "workload": workload,
        "nodes": nodes,
        "jobs": jobs,
        "single_gpu": single_gpu,
        "reference": {
            "row": row,
            "solver": "OR-Tools CP-SAT",
            "status": reference.status,
            "seconds": reference.seconds,
            "proven_optimal": reference.proven_optimal,
            "placed_upper_bound": reference.placed_upper_bound,
            "time_limit_s": reference.time_limit_s,
            "job_groups": reference.groups,
            "variables": reference.variables,
        },
        "strategies": runs,
    }


def assignment_of(result: Plan) -> dict[int, list[int]]:
    """A plan as job key → the node of each replica (the keys are the jobs' indices)."""
    out: dict[int, list[int]] = {}
    for a in result.placements:
        assert isinstance(a.job, int)
        out.setdefault(a.job, []).append(a.node_id)
    return out


# -- the same feasibility as HTCondor ClassAds -------------------------------------------------


def classads(*, nodes: int, jobs: int, seed: int = 0, workload: str = "distinct") -> dict[str, Any]:
    """Feasibility of every (job, node) pair: depin's checks against ClassAd matchmaking.

    ClassAds evaluates each job's Requirements against each machine ad: one
    evaluation per pair. HTCondor's negotiator groups identical jobs into
    autoclusters, which saves nothing when every job is its own request (the
    distinct workload), and it keeps no index of machines. depin evaluates a
    request's static checks once per node class (or once per block of one kind)
    and its latency once per location: it counts those evaluations, and how many pairs they
    decided and how many feasible pairs they found, for the class path and for
    the per-job scan (``scheduler.sparse``) that the scheduler takes on such jobs.
    """
    try:
        import classad2
    except ImportError:
        return {"skipped": "the htcondor package is not installed (pip install 'depin[bench]')"}
    fleet = fleet_of(workload, nodes, seed)
    snap = Snapshot(offers_of(fleet))
    specs = workload_jobs(workload, jobs, seed=seed + 2)
    machine_ads = [_machine_ad(classad2, o) for o in snap.offers]
    job_ads = [_job_ad(classad2, s) for s in specs]
    t = time.perf_counter()
    # m.matches(job) evaluates the job's Requirements with the machine as TARGET: one pair.
    theirs = [sum(1 for m in machine_ads if m.matches(ad)) for ad in job_ads]
    classad_s = time.perf_counter() - t
    repeat = 20  # ours is fast: time more jobs for a stable figure
    requests = [Request.of(s) for s in specs]
    t = time.perf_counter()
    for _ in range(repeat):
        by_class = [evaluate(r, snap).feasible for r in requests]
    class_s = (time.perf_counter() - t) / repeat
    # One evaluation per class per request, and one per location for a request with users.
    class_evaluations = sum(snap.classes + (snap.locations if r.has_near else 0) for r in requests)
    count_feasible(specs[:1], snap)  # compile or load the scan: a running scheduler has
    t = time.perf_counter()
    for _ in range(repeat):
        by_job, work = count_feasible(specs, snap)
    job_s = (time.perf_counter() - t) / repeat
    pairs = nodes * jobs

    def rates(seconds: float, evaluations: int, found: list[int]) -> dict[str, Any]:
        return {
            "evaluations_per_s": round(evaluations / seconds),
            "pairs_decided_per_s": round(pairs / seconds),
            "feasible_pairs_per_s": round(sum(found) / seconds),
            "speedup_vs_classads": round(classad_s / seconds, 1),
            "same_feasible_sets": found == theirs,
        }

    return {
        "workload": workload,
        "nodes": nodes,
        "jobs": jobs,
        "classes": snap.classes,
        "locations": snap.locations,
        "cells": snap.cells,
        "classad_index": "none (each job's Requirements against each machine ad)",
        "classad_pairs_evaluated_per_s": round(pairs / classad_s),
        "class_path": rates(class_s, class_evaluations, by_class),
        "per_job_scan": {**rates(job_s, sum(work.values()), by_job), "work": work},
        "feasible_nodes_per_job": statistics.mean(theirs),
    }


def _machine_ad(classad2: Any, o: Offer) -> Any:
    x, y, z = _unit(o.lat, o.lon)
    return classad2.ClassAd(
        {
            "Accelerator": o.accelerator,
            "GpuModel": o.gpu_model,
            "VramGib": float(o.vram_gib),
            "Gpus": int(o.gpus_total or o.gpus_free),
            "Tier": o.tier,
            "Region": o.region,
            "PricePerGpuHour": float(o.price_usd_per_gpu_hour),
            "Network": o.network,
            "X": x,
            "Y": y,
            "Z": z,
        }
    )


def _unit(lat: float, lon: float) -> tuple[float, float, float]:
    from scheduler.latency import unit_vectors

    v = unit_vectors([lat], [lon])[0]
    return float(v[0]), float(v[1]), float(v[2])


def _job_ad(classad2: Any, spec: JobSpec) -> Any:
    """The job's hard constraints as a ClassAd Requirements expression, clause for clause."""
    res, place = spec.resources, spec.placement
    terms = [f'TARGET.Accelerator == "{res.accelerator}"']
    if res.gpu_models:
        terms.append(
            "member(TARGET.GpuModel, {" + ", ".join(f'"{m}"' for m in res.gpu_models) + "})"
        )
    if res.vram_gib is not None:
        terms.append(f"TARGET.VramGib >= {res.vram_gib!r}")
    terms.append(f"TARGET.Gpus >= {res.gpus}")
    if place.tiers:
        terms.append("member(TARGET.Tier, {" + ", ".join(f'"{t}"' for t in place.tiers) + "})")
    if place.regions:
        alts = [
            f'(TARGET.Region == "{r}" || regexp("^{r}-", TARGET.Region))' for r in place.regions
        ]
        terms.append("(" + " || ".join(alts) + ")")
    if spec.pricing.max_usd_per_gpu_hour is not None:
        terms.append(
            f"TARGET.PricePerGpuHour <= {float(spec.pricing.max_usd_per_gpu_hour) + 1e-12!r}"
        )
    if place.max_latency_ms is not None:
        from scheduler.latency import ACCESS_RTT_MS, max_distance_km, min_dot_for_distance

        thresholds = {
            n: float(min_dot_for_distance(max_distance_km(place.max_latency_ms, n)))
            for n in ACCESS_RTT_MS
        }
        pick = (
            " : ".join(f'TARGET.Network == "{n}" ? {t!r}' for n, t in thresholds.items()) + " : 2.0"
        )
        for p in place.near:
            ux, uy, uz = _unit(p.lat, p.lon)
            terms.append(f"(TARGET.X * {ux!r} + TARGET.Y * {uy!r} + TARGET.Z * {uz!r}) >= ({pick})")
    ad = classad2.ClassAd()
    ad["Requirements"] = classad2.ExprTree(" && ".join(terms))
    return ad


def run(
    *,
    nodes: int = 10_000,
    jobs: int = 20_000,
    seed: int = 0,
    big_nodes: int = 100_000,
    classad_jobs: int = 20,
    workloads: tuple[str, ...] = WORKLOADS,
    database_url: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every scheduler figure of the README's performance section, per workload."""
    say = progress or (lambda _msg: None)
    out: dict[str, Any] = {"single_job": [], "batch": {}, "quality": {}, "quality_single_gpu": {}}
    for workload in workloads:
        say(
            f"{workload}: single-job decisions on {nodes} and {big_nodes} nodes, each fleet "
            "busy with a batch as big as itself"
        )
        out["single_job"] += [
            single_job_latency(n, workload=workload, seed=seed) for n in (nodes, big_nodes)
        ]
        say(f"{workload}: a cycle of {jobs} jobs on {nodes} nodes: read, plan, commit")
        out["batch"][workload] = batch_throughput(
            nodes=nodes,
            jobs=jobs,
            seed=seed,
            database_url=database_url,
            workload=workload,
            progress=say,
        )
    q_nodes, q_jobs = min(nodes, QUALITY_NODES), min(jobs, QUALITY_JOBS)
    smaller = (
        f"; smaller than the batch ({nodes} x {jobs}): the exact model is capped at "
        f"{QUALITY_NODES} x {QUALITY_JOBS} to fit its time limit"
        if (q_nodes, q_jobs) != (nodes, jobs)
        else ""
    )
    for workload in workloads:
        for key, single_gpu in (("quality", False), ("quality_single_gpu", True)):
            which = "single-GPU jobs" if single_gpu else "mixed GPU sizes"
            say(
                f"{workload}: quality ({which}, cost-only objective): {q_nodes} nodes x "
                f"{q_jobs} jobs against an exact CP-SAT model, time limit "
                f"{EXACT_TIME_LIMIT_S:g} s{smaller}"
            )
            n, j, name = q_nodes, q_jobs, workload
            while True:
                q = quality(nodes=n, jobs=j, seed=seed, single_gpu=single_gpu, workload=workload)
                out[key][name] = q
                ref = q["reference"]
                if ref["proven_optimal"]:
                    say(f"the reference is proven optimal ({ref['seconds']:g} s)")
                    break
                say(
                    f"the reference is NOT proven optimal ({ref['status']} at the "
                    f"{ref['time_limit_s']:g} s limit; at most {ref['placed_upper_bound']} "
                    "placeable)"
                )
                # Too big to prove: judge again on an instance half the size, as well.
                n, j = n // 2, j // 2
                if j < MIN_PROVEN_JOBS:
                    break
                name = f"{workload}, {n} x {j}"
                say(f"{workload}: quality again on a smaller instance, {n} nodes x {j} jobs")
    say(f"feasibility as HTCondor ClassAds: {classad_jobs} distinct jobs x {nodes} nodes")
    out["classads"] = classads(nodes=nodes, jobs=classad_jobs, seed=seed)
    return out
