"""The quality bench's reference: an exact job × node assignment, sharing no code with
``scheduler/``.

A reference that reuses what it judges (the feasibility, the snapshot, the
flow's decomposition by GPU size) agrees with it by construction. This module
imports nothing from ``scheduler/``: jobs and nodes arrive as plain values
(``Job``, ``Node``), and the constraints, the latency model and the
optimization model are written here again from the README's description:

- RTT = access RTT of the node's network (fiber 2, wifi 5, 5g 12, lte 35 ms)
  + 2 × great-circle km × 1.5 route stretch / 200 km per ms + the node's RTT
  bias, never below 0.1 ms; with several ``near`` points the budget holds
  from each.
- A node can take one replica of a job when its accelerator kind matches, its
  model is among ``gpu_models`` (if any), its per-GPU memory is at least
  ``vram_gib``, it has the replica's GPUs, its tier is among ``tiers`` and its
  region among ``regions`` (``eu`` matches every ``eu-*``) if given, its price
  is at most the cap, and the RTT fits the budget.

The model (OR-Tools CP-SAT) has integer variables, so mixed GPU sizes and
multi-replica jobs are exact, not solved size by size: identical jobs form a
group ``g`` of ``k_g`` jobs (an exact reformulation: identical jobs are
interchangeable, and one integer per group and node spares the solver their
symmetry), and

    x[g, n] ∈ 0..k_g      replicas of group g on node n
    y[g]    ∈ 0..k_g      jobs of group g placed
    Σ_n x[g, n] = replicas_g · y[g]                 all replicas or none
    x[g, n] ≤ y[g]          (replicas_g > 1)        replicas on distinct nodes
    Σ_g gpus_g · x[g, n] ≤ gpus_n                   capacity
    maximize  W · Σ_g y[g] − Σ price_n · gpus_g · x[g, n]

with W larger than any plan's total cost, so placements come first and the
cost (integer micro-USD per hour) second. A vector of ``x[g, ·]`` with sum
``r · y`` and no entry above ``y`` splits into ``y`` sets of ``r`` distinct
nodes (fill the jobs round-robin), which is how ``Solution.assignment``
hands them out.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

ACCESS_RTT_MS = {"fiber": 2.0, "wifi": 5.0, "5g": 12.0, "lte": 35.0}
ROUTE_STRETCH = 1.5
FIBRE_KM_PER_MS = 200.0
MIN_RTT_MS = 0.1
EARTH_RADIUS_KM = 6371.0088  # IUGG mean radius (the README names none)
# Haversine and the scheduler's dot products round differently; a node within a
# nanosecond of the budget counts as inside it.
BUDGET_TOLERANCE_MS = 1e-6
MICRO = 1_000_000
MAX_PROBLEMS = 10  # problems a judged plan lists; the count is always complete


@dataclass(frozen=True, slots=True)
class Node:
    """A node as the reference sees it: capacity all free, price in micro-USD."""

    node_id: int
    accelerator: str
    gpu_model: str
    gpus: int
    vram_gib: float
    price_micro_usd_per_gpu_hour: int
    lat: float
    lon: float
    tier: str
    region: str
    network: str
    rtt_bias_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Job:
    """One job's hard constraints; ``gpus`` per replica, replicas on distinct nodes."""

    gpus: int
    replicas: int = 1
    accelerator: str = "gpu"
    gpu_models: tuple[str, ...] = ()
    vram_gib: float | None = None
    tiers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    max_price_micro_usd_per_gpu_hour: int | None = None
    max_latency_ms: float | None = None
    near: tuple[tuple[float, float], ...] = ()


def micro_usd(usd: Decimal | str | int) -> int:
    """Exact micro-USD of a decimal price (prices carry at most six decimals)."""
    value = Decimal(usd) * MICRO
    if value != value.to_integral_value():
        raise ValueError(f"{usd} USD is not a whole number of micro-USD")
    return int(value)


def job_of(spec: Any) -> Job:
    """The plain fields of a ``depin.spec.JobSpec`` (read, nothing computed from them)."""
    res, place, cap = spec.resources, spec.placement, spec.pricing.max_usd_per_gpu_hour
    return Job(
        gpus=int(res.gpus),
        replicas=int(spec.replicas),
        accelerator=str(res.accelerator),
        gpu_models=tuple(res.gpu_models),
        vram_gib=None if res.vram_gib is None else float(res.vram_gib),
        tiers=tuple(place.tiers),
        regions=tuple(place.regions),
        max_price_micro_usd_per_gpu_hour=None if cap is None else micro_usd(cap),
        max_latency_ms=None if place.max_latency_ms is None else float(place.max_latency_ms),
        near=tuple((float(p.lat), float(p.lon)) for p in place.near),
    )


def nodes_of_fleet(fleet: Sequence[Any]) -> list[Node]:
    """A synthetic fleet (``providers.fleet.SyntheticNode``) as nodes 1..n.

    Kind and memory come from the accelerator catalog's published specs.
    """
    from providers.catalog import lookup

    return [
        Node(
            node_id=i + 1,
            accelerator=lookup(n.gpu_model).kind,
            gpu_model=n.gpu_model,
            gpus=int(n.gpus),
            vram_gib=float(lookup(n.gpu_model).memory_gib),
            price_micro_usd_per_gpu_hour=micro_usd(n.price_usd_per_gpu_hour),
            lat=float(n.lat),
            lon=float(n.lon),
            tier=n.tier,
            region=n.region,
            network=n.network,
        )
        for i, n in enumerate(fleet)
    ]


# -- constraints -------------------------------------------------------------------------------


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def rtt_ms(node: Node, lat: float, lon: float) -> float:
    """The modelled round trip from a user at (lat, lon) to ``node``."""
    km = great_circle_km(lat, lon, node.lat, node.lon)
    path_ms = 2 * km * ROUTE_STRETCH / FIBRE_KM_PER_MS
    return max(MIN_RTT_MS, ACCESS_RTT_MS[node.network] + path_ms + node.rtt_bias_ms)


def region_matches(wanted: str, region: str) -> bool:
    return region == wanted or region.startswith(wanted + "-")


def violations(job: Job, node: Node) -> list[str]:
    """Every hard constraint of ``job`` that ``node`` breaks (empty: it can take a replica)."""
    out = []
    if node.accelerator != job.accelerator:
        out.append(f"accelerator {node.accelerator} != {job.accelerator}")
    if job.gpu_models and node.gpu_model not in job.gpu_models:
        out.append(f"gpu model {node.gpu_model} not wanted")
    if job.vram_gib is not None and node.vram_gib < job.vram_gib:
        out.append(f"vram {node.vram_gib} < {job.vram_gib} GiB")
    if node.gpus < job.gpus:
        out.append(f"gpus {node.gpus} < {job.gpus}")
    if job.tiers and node.tier not in job.tiers:
        out.append(f"tier {node.tier} not wanted")
    if job.regions and not any(region_matches(r, node.region) for r in job.regions):
        out.append(f"region {node.region} not wanted")
    cap = job.max_price_micro_usd_per_gpu_hour
    if cap is not None and node.price_micro_usd_per_gpu_hour > cap:
        out.append(f"price {node.price_micro_usd_per_gpu_hour} > {cap} micro-USD")
    if job.max_latency_ms is not None:
        worst = max(rtt_ms(node, lat, lon) for lat, lon in job.near)
        if worst > job.max_latency_ms + BUDGET_TOLERANCE_MS:
            out.append(f"rtt {worst:.3f} > {job.max_latency_ms} ms")
    return out


def feasible(job: Job, node: Node) -> bool:
    return not violations(job, node)


# -- the exact model ---------------------------------------------------------------------------


@dataclass(slots=True)
class Solution:
    """The reference's answer. ``assignment`` maps a job's index to its nodes, one a replica."""

    placed: int
    cost_micro_usd_per_hour: int
    proven_optimal: bool
    status: str
    seconds: float
    time_limit_s: float
    placed_upper_bound: int
    groups: int
    variables: int
    assignment: dict[int, list[int]] = field(default_factory=dict)

    @property
    def cost_usd_per_hour(self) -> float:
        return self.cost_micro_usd_per_hour / MICRO


def solve(
    jobs: Sequence[Job],
    nodes: Sequence[Node],
    *,
    time_limit_s: float = 10.0,
    workers: int | None = None,
) -> Solution:
    """Place as many jobs as possible, then at the least total price, on all-free ``nodes``.

    The solver stops at ``time_limit_s``; ``Solution.proven_optimal`` says whether it
    proved its answer optimal by then (if it found nothing, the answer is the empty
    plan, unproven). ``workers`` defaults to the CPUs, at most 8.
    """
    from ortools.sat.python import cp_model

    t0 = time.perf_counter()
    built = _build(jobs, nodes)
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = workers or min(8, os.cpu_count() or 1)
    code = solver.solve(built.model)
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE, cp_model.UNKNOWN):
        raise RuntimeError(f"the exact model is {solver.status_name(code)}: a bug in it")
    found = code != cp_model.UNKNOWN
    counts = {k: solver.value(v) for k, v in built.x.items() if found and solver.value(v)}
    placed = [solver.value(v) if found else 0 for v in built.y]
    assignment = _hand_out(built.members, placed, counts)
    proven = code == cp_model.OPTIMAL
    bound = solver.best_objective_bound
    # W·placed − cost ≤ bound and 0 ≤ cost < W, so placed ≤ ⌊(bound + W − 1) / W⌋.
    upper = (bound + built.weight - 1) // built.weight if math.isfinite(bound) else len(jobs)
    return Solution(
        placed=len(assignment),
        cost_micro_usd_per_hour=_cost(jobs, {n.node_id: n for n in nodes}, assignment),
        proven_optimal=proven,
        status=solver.status_name(code),
        seconds=round(time.perf_counter() - t0, 3),
        time_limit_s=time_limit_s,
        placed_upper_bound=len(assignment) if proven else min(len(jobs), int(upper)),
        groups=len(built.members),
        variables=len(built.x) + len(built.y),
        assignment=assignment,
    )


@dataclass(slots=True)
class _Built:
    model: Any
    x: dict[tuple[int, int], Any]  # (group, node id) → replicas there
    y: list[Any]  # group → jobs placed
    members: list[list[int]]  # group → its jobs' indices
    weight: int


def _build(jobs: Sequence[Job], nodes: Sequence[Node]) -> _Built:
    from ortools.sat.python import cp_model

    groups = _groups(jobs)
    kinds, members = list(groups), list(groups.values())
    candidates = [[n for n in nodes if feasible(job, n)] for job in kinds]
    model = cp_model.CpModel()
    y = [model.new_int_var(0, len(m), f"y{g}") for g, m in enumerate(members)]
    x: dict[tuple[int, int], Any] = {}
    for g, job in enumerate(kinds):
        for n in candidates[g]:
            x[g, n.node_id] = model.new_int_var(0, min(len(members[g]), n.gpus // job.gpus), "")
            if job.replicas > 1:
                model.add(x[g, n.node_id] <= y[g])
        model.add(sum(x[g, n.node_id] for n in candidates[g]) == job.replicas * y[g])
    load: dict[int, list[Any]] = {}
    for (g, node_id), var in x.items():
        load.setdefault(node_id, []).append(kinds[g].gpus * var)
    by_id = {n.node_id: n for n in nodes}
    for node_id, terms in load.items():
        model.add(sum(terms) <= by_id[node_id].gpus)
    # Prices in their common unit (whole cents, say) keep the coefficients small, which the
    # solver's LP bound needs. W is above any plan's total cost: one more placement always
    # beats any saving.
    unit = math.gcd(*(n.price_micro_usd_per_gpu_hour for n in nodes)) or 1
    weight = 1 + sum(
        len(m) * _dearest(job, c) // unit
        for job, m, c in zip(kinds, members, candidates, strict=True)
    )
    cost = sum(
        by_id[n].price_micro_usd_per_gpu_hour // unit * kinds[g].gpus * var
        for (g, n), var in x.items()
    )
    model.maximize(weight * sum(y) - cost)
    return _Built(model, x, y, members, weight)


def _groups(jobs: Sequence[Job]) -> dict[Job, list[int]]:
    """Identical jobs, by first appearance: job → the indices of its copies."""
    out: dict[Job, list[int]] = {}
    for i, job in enumerate(jobs):
        out.setdefault(job, []).append(i)
    return out


def _dearest(job: Job, candidates: Iterable[Node]) -> int:
    """The most one job of this kind can cost, in micro-USD per hour."""
    prices = [n.price_micro_usd_per_gpu_hour for n in candidates]
    return job.replicas * job.gpus * max(prices, default=0)


def _hand_out(
    members: Sequence[list[int]], placed: Sequence[int], counts: Mapping[tuple[int, int], int]
) -> dict[int, list[int]]:
    """Split each group's per-node replica counts into jobs: round-robin keeps replicas apart.

    A node holds at most ``placed[g]`` of the group's replicas, and its slots are
    consecutive, so they go to as many different jobs.
    """
    slots: dict[int, list[int]] = {}
    for (g, node_id), count in sorted(counts.items()):
        slots.setdefault(g, []).extend([node_id] * count)
    out: dict[int, list[int]] = {}
    for g, row in slots.items():
        chosen = members[g][: placed[g]]
        for k, node_id in enumerate(row):
            out.setdefault(chosen[k % len(chosen)], []).append(node_id)
    return out


def _cost(
    jobs: Sequence[Job], by_id: Mapping[int, Node], assignment: Mapping[int, Sequence[int]]
) -> int:
    """Total price of an assignment in micro-USD per hour (nodes not in ``by_id`` are skipped)."""
    return sum(
        by_id[n].price_micro_usd_per_gpu_hour * jobs[j].gpus
        for j, where in assignment.items()
        for n in where
        if n in by_id
    )


# -- judging a plan ----------------------------------------------------------------------------


def judge(
    jobs: Sequence[Job],
    nodes: Sequence[Node],
    assignment: Mapping[int, Sequence[int]],
    reference: Solution,
) -> dict[str, Any]:
    """A plan (job index → its replicas' node ids) checked and measured against the reference.

    The plan's cost is recomputed from the nodes' prices, and every placement
    is checked again (constraints, capacity, all replicas, distinct nodes): a
    plan that breaks one is reported ``valid: False`` with its problems, since
    its count is then no measure of quality.
    """
    problems = _problems(jobs, nodes, assignment)
    by_id = {n.node_id: n for n in nodes}
    cost = _cost(jobs, by_id, assignment)
    placed = [j for j, where in assignment.items() if where]
    exact_cost = reference.cost_micro_usd_per_hour
    gap = 100 * (cost / exact_cost - 1) if exact_cost else (0.0 if cost == 0 else math.inf)
    return {
        "placed": len(placed),
        "gpus_placed": sum(jobs[j].gpus * jobs[j].replicas for j in placed),
        "cost_usd_per_hour": round(cost / MICRO, 2),
        "cost_micro_usd_per_hour": cost,
        "placed_vs_exact": len(placed) - reference.placed,
        "cost_gap_pct": round(gap, 4),
        "valid": not problems,
        "problems": len(problems),
        "first_problems": problems[:MAX_PROBLEMS],
    }


def _problems(
    jobs: Sequence[Job], nodes: Sequence[Node], assignment: Mapping[int, Sequence[int]]
) -> list[str]:
    by_id = {n.node_id: n for n in nodes}
    used: dict[int, int] = {}
    out = []
    for j, where in sorted(assignment.items()):
        if not where:
            continue
        job = jobs[j]
        if len(where) != job.replicas:
            out.append(f"job {j}: {len(where)} of {job.replicas} replicas placed")
        if len(set(where)) != len(where):
            out.append(f"job {j}: two replicas on one node")
        for node_id in where:
            node = by_id.get(node_id)
            if node is None:
                out.append(f"job {j}: no node {node_id}")
                continue
            out += [f"job {j} on node {node_id}: {v}" for v in violations(job, node)]
            used[node_id] = used.get(node_id, 0) + job.gpus
    out += [
        f"node {n}: {gpus} GPUs taken of {by_id[n].gpus}"
        for n, gpus in sorted(used.items())
        if gpus > by_id[n].gpus
    ]
    return out
