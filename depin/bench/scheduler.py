"""``depin bench scheduler``: decision latency, batch throughput, quality, and ClassAds.

Every figure is measured in this process on a synthetic but realistic fleet
(``providers.fleet``) and workload (``depin.bench.workload``); ratios are taken
against baselines run in the same process, since the machine is shared.
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

from depin.bench.workload import submit_as_new_developer, synthetic_jobs
from depin.config import Settings
from depin.market import Marketplace
from depin.runtime.cycle import schedule
from depin.spec import JobSpec
from providers.catalog import lookup
from providers.fleet import SyntheticNode, synthetic_nodes
from scheduler import Offer, Snapshot, admit, plan
from scheduler.batch import build_batch
from scheduler.feasibility import evaluate
from scheduler.request import Request

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


# -- single-job decision latency ---------------------------------------------------------------


def single_job_latency(nodes: int, *, decisions: int = 2000, seed: int = 0) -> dict[str, Any]:
    """One job at a time against a live snapshot, as a scheduler placing a stream would."""
    snap = Snapshot(offers_of(synthetic_nodes(nodes, seed=seed)))
    jobs = synthetic_jobs(decisions, seed=seed + 1)
    for j in jobs[:50]:  # warm caches and imports; not measured
        plan([j], snap, keys=[0])
        snap.restore_free(snap.gpus_total.copy())
    times = []
    placed = 0
    for i, spec in enumerate(jobs):
        saved = snap.copy_free()
        t = time.perf_counter()
        result = plan([spec], snap, keys=[i])
        times.append(time.perf_counter() - t)
        placed += bool(result.placements)
        snap.restore_free(saved)
    ms = np.array(times) * 1000
    return {
        "nodes": nodes,
        "classes": snap.classes,
        "cells": snap.cells,
        "decisions": decisions,
        "placed": placed,
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


# -- batch throughput, with the commit to the ledger -------------------------------------------


def batch_throughput(
    *,
    nodes: int,
    jobs: int,
    seed: int = 0,
    database_url: str | None = None,
    mode: str = "auto",
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Place ``jobs`` pending jobs on ``nodes`` nodes in one cycle and commit it."""
    say = progress or (lambda _msg: None)
    home = Path(tempfile.mkdtemp(prefix="depin-bench-"))
    try:
        market = Marketplace(Settings.from_env(home=home, database_url=database_url))
        try:
            say(f"registering {nodes} nodes and submitting {jobs} signed jobs (not timed)")
            job_ids = _populate(market, nodes, jobs, seed)
            plan(synthetic_jobs(2, seed=seed), offers_of(synthetic_nodes(10, seed=seed)), mode=mode)
            gc.collect()  # the line above warmed imports (OR-Tools unless mode="fast"), as a
            # running scheduler has
            # A cycle as ``depin.runtime.loop.Driver`` runs it: read the pending jobs and the fleet
            # (the driver keeps the snapshot across cycles), plan, commit.
            t0 = time.perf_counter()
            work = market.pending_work(job_ids, limit=jobs)
            assert work.offers is not None
            snap = Snapshot(work.offers)
            t1 = time.perf_counter()
            done = schedule(market, work, snap, mode=mode, driver_id=None)
            t3 = time.perf_counter()
            commit = done.commit
            verified = market.verify_ledger()
            placed = len(commit.reserved)
            return {
                "nodes": nodes,
                "jobs": jobs,
                "database": market.engine.dialect.name,
                "mode": done.mode,
                "placed": placed,
                "read_s": round(t1 - t0, 3),
                "plan_s": round(done.plan_s, 3),
                "commit_s": round(done.commit_s, 3),
                "placements_per_s": round(placed / (t3 - t1)),
                "placements_per_s_with_read": round(placed / (t3 - t0)),
                "conflicts": commit.conflicts,
                "ledger_ok": verified.ok,
                "ledger_entries": verified.entries,
            }
        finally:
            market.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _populate(market: Marketplace, nodes: int, jobs: int, seed: int) -> list[int]:
    run = uuid.uuid4().hex[:8]  # a --db may hold earlier runs: names of this one are fresh
    fleet = [replace(n, provider=f"{n.provider}-{run}") for n in synthetic_nodes(nodes, seed=seed)]
    for provider in sorted({n.provider for n in fleet}):
        market.create_account(provider, Ed25519PrivateKey.generate().public_key(), kind="provider")
    market.add_nodes([n.spec() for n in fleet])
    # Jobs no node could ever take are refused at submission; draw until there are enough.
    snap = Snapshot(market.offers())
    specs: list[JobSpec] = []
    draw = seed + 1
    while len(specs) < jobs:
        candidates = synthetic_jobs(jobs, seed=draw)
        specs += [s for s in candidates if admit(s, snap).ok][: jobs - len(specs)]
        draw += 1000
    return submit_as_new_developer(market, specs, run)


# -- quality against the exact flow ------------------------------------------------------------


def quality(*, nodes: int, jobs: int, seed: int = 0, single_gpu: bool = False) -> dict[str, Any]:
    """Cost-only objective: placements and total price of each strategy against the exact flow."""
    offers = offers_of(synthetic_nodes(nodes, seed=seed))
    specs = synthetic_jobs(jobs, seed=seed + 1, cost_only=True, single_gpu=single_gpu)
    keys = list(range(len(specs)))
    runs: dict[str, dict[str, Any]] = {}
    strategies = {
        "plain greedy": {"mode": "fast", "regret": False, "repair": False},
        "regret greedy": {"mode": "fast", "repair": False},
        "fast (regret + repair)": {"mode": "fast"},
        "optimal (flow over cells)": {"mode": "optimal"},
    }
    for name, kwargs in strategies.items():
        snap = Snapshot(offers)
        t = time.perf_counter()
        result = plan(specs, snap, keys=keys, **kwargs)
        runs[name] = {
            "placed": len({p.job for p in result.placements}),
            "cost_usd_per_hour": round(result.total_cost_usd_per_hour(), 2),
            "seconds": round(time.perf_counter() - t, 3),
        }
    t = time.perf_counter()
    placed, cost = exact_node_flow(Snapshot(offers), specs)
    runs["exact (flow over nodes)"] = {
        "placed": placed,
        "cost_usd_per_hour": round(cost, 2),
        "seconds": round(time.perf_counter() - t, 3),
    }
    exact = runs["exact (flow over nodes)"]
    for r in runs.values():
        r["placed_vs_exact"] = r["placed"] - exact["placed"]
        r["cost_gap_pct"] = round(
            100 * (r["cost_usd_per_hour"] / exact["cost_usd_per_hour"] - 1), 2
        )
    return {"nodes": nodes, "jobs": jobs, "single_gpu": single_gpu, "strategies": runs}


def exact_node_flow(snap: Snapshot, specs: list[JobSpec]) -> tuple[int, float]:
    """The reference: a min-cost flow with one arc per (request class, node), cost = price.

    Written independently of the scheduler's cell flow, so the two check each
    other. Exact for a cost-only objective when jobs share a GPU size; several
    sizes are solved largest first.
    """
    from ortools.graph.python import min_cost_flow

    batch = build_batch(specs, list(range(len(specs))), snap)
    placed, cost = 0, 0.0
    for size in sorted({g.req.gpus for g in batch.groups}, reverse=True):
        groups = [g for g in batch.groups if g.req.gpus == size]
        slots = snap.gpus_free // size
        n_groups, sink = len(groups), 1 + len(groups) + snap.size
        tails, heads, caps, costs = [], [], [], []
        for gi, g in enumerate(groups):
            rows = g.feas.static_rows(snap)
            rows = rows[slots[rows] > 0]
            tails += [0, *([1 + gi] * len(rows))]
            heads += [1 + gi, *(1 + n_groups + rows).tolist()]
            caps += [g.demand, *slots[rows].tolist()]
            costs += [0, *np.round(snap.price[rows] * size * 10_000).astype(np.int64).tolist()]
        tails += (1 + n_groups + np.arange(snap.size)).tolist()
        heads += [sink] * snap.size
        caps += slots.tolist()
        costs += [0] * snap.size
        solver = min_cost_flow.SimpleMinCostFlow()
        arcs = solver.add_arcs_with_capacity_and_unit_cost(
            np.array(tails), np.array(heads), np.array(caps), np.array(costs)
        )
        supply = sum(g.demand for g in groups)
        solver.set_nodes_supplies(np.array([0, sink]), np.array([supply, -supply]))
        assert solver.solve_max_flow_with_min_cost() == solver.OPTIMAL
        flows = solver.flows(arcs)
        heads_arr, flows_arr = np.array(heads), np.asarray(flows)
        used = (heads_arr > n_groups) & (heads_arr < sink) & (flows_arr > 0) & (np.array(tails) > 0)
        rows = heads_arr[used] - 1 - n_groups
        placed += int(flows_arr[used].sum())
        cost += float((snap.price[rows] * size * flows_arr[used]).sum())
        np.subtract.at(snap.gpus_free, rows, (flows_arr[used] * size).astype(np.int32))
        snap.restore_free(snap.gpus_free.copy())
    return placed, cost


# -- the same feasibility as HTCondor ClassAds -------------------------------------------------


def classads(*, nodes: int, jobs: int, seed: int = 0) -> dict[str, Any]:
    """Pairs (job, node) checked per second: depin's feasibility vs ClassAd matchmaking."""
    try:
        import classad2
    except ImportError:
        return {"skipped": "the htcondor package is not installed (pip install 'depin[bench]')"}
    fleet = synthetic_nodes(nodes, seed=seed)
    snap = Snapshot(offers_of(fleet))
    specs = synthetic_jobs(jobs, seed=seed + 2)
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
        ours = [evaluate(r, snap).feasible for r in requests]
    ours_s = (time.perf_counter() - t) / repeat
    pairs = nodes * jobs
    return {
        "nodes": nodes,
        "jobs": jobs,
        "classad_pairs_per_s": round(pairs / classad_s),
        "depin_pairs_per_s": round(pairs / ours_s),
        "speedup": round(classad_s / ours_s, 1),
        "same_feasible_sets": ours == theirs,
        "feasible_nodes_per_job": statistics.mean(ours),
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
    database_url: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every scheduler figure of the README's performance section."""
    say = progress or (lambda _msg: None)
    out: dict[str, Any] = {}
    say(f"single-job decisions on {nodes} and {big_nodes} nodes")
    out["single_job"] = [single_job_latency(n, seed=seed) for n in (nodes, big_nodes)]
    say(f"batch: {jobs} jobs on {nodes} nodes, committed to the ledger")
    out["batch"] = batch_throughput(
        nodes=nodes, jobs=jobs, seed=seed, database_url=database_url, progress=say
    )
    say("quality with a cost-only objective, against the exact flow")
    out["quality"] = quality(nodes=nodes, jobs=jobs, seed=seed)
    out["quality_single_gpu"] = quality(nodes=nodes, jobs=jobs, seed=seed, single_gpu=True)
    say(f"feasibility as HTCondor ClassAds: {classad_jobs} jobs x {nodes} nodes")
    out["classads"] = classads(nodes=nodes, jobs=classad_jobs, seed=seed)
    return out
