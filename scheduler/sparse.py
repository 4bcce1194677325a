"""Batches where every job is its own request: each job scanned, then placed greedily.

The class/cell path (``batch``) evaluates once per request class and node
cell. On a batch where no two jobs ask for the same thing (their own users,
caps, budgets) and no two nodes share a price, that is once per job and per
node, in numpy calls whose overhead becomes the cost. This path scans each
job against the fleet in one compiled loop (``scheduler.kernels``):

1. per location (a place and its access network), one dot product with the
   job's users: a location out of the latency budget rejects all its nodes at
   once (on this path latency is the first check, so it is named for them);
2. per node at the locations in reach, the static checks in the class path's
   order, each counting the nodes it was the first to reject, then the score
   exactly as ``scoring.row_totals`` computes it;
3. the job's ``CANDIDATES`` best nodes with room (total, then cheaper, then
   node id).

Assignment follows ``assign.assign_fast``: fewest options first, then the
largest regret; each job takes the best candidate with room, the emptiest
among those within the spread term; a job whose candidates all filled up is
scanned again against what is left.

Only jobs of one replica with at most one ``near`` point take this path; a
batch's other jobs take the class path first, on the same capacity.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from depin.spec import JobSpec
from scheduler.assign import REPAIR_MAX_VISITS, REPAIR_TOTAL_VISITS
from scheduler.explain import Candidate, JobMetric, suggestions
from scheduler.feasibility import check_label
from scheduler.flow import COST_SCALE, SCORE_CEILING, unplaced_cost
from scheduler.latency import unit_vectors
from scheduler.offers import (
    ACCELERATOR_CODES,
    ACCESS_RTT_BY_CODE,
    MODEL_CODES,
    TIER_CODES,
    Snapshot,
)
from scheduler.request import Request
from scheduler.scoring import LATENCY_REF_MS

CANDIDATES = 16  # best nodes kept per job from its scan; more come from a rescan
TOP_CANDIDATES = 3  # of which a placed job's record keeps this many
# A batch takes this path when it has at least this many jobs and more request classes
# than this share of its jobs (counted by the identity of their parts: cheap, and jobs
# made from one template share them), or when the fleet has at least this many nodes and
# more classes than this share of them.
SPARSE_MIN_JOBS = 64
SPARSE_MIN_NODES = 2000
SPARSE_MIN_CLASS_SHARE = 0.5
SUGGEST_FOR_JOBS = 8  # suggestions for waiting jobs when at most this many are left out
SUGGEST_MAX_NODES = 20_000  # ... and the fleet has at most this many nodes
TALLY_MIN_JOBS = 64  # fewer jobs count their feasible nodes' room one by one
FLOW_MAX_ARCS = 1_000_000  # (job, node) pairs the optimal flow takes on (as plan's limit)
FLOW_ROUNDS = 3  # with several GPU sizes: each re-solved given the others, this many times
_CHECK_NAMES = ("latency", "accelerator", "gpu_model", "vram_gib", "gpus", "tier", "region")
CHECK_NAMES = (*_CHECK_NAMES, "price")  # the kernels' check indices, in order


def eligible(spec: JobSpec) -> bool:
    """One replica and at most one place of users: what the compiled scan handles."""
    return spec.replicas == 1 and len(spec.placement.near) <= 1


def worth_it(jobs: Sequence[JobSpec], snap: Snapshot) -> bool:
    """True when most jobs of the batch are their own request class, or on a big fleet when
    the batch is a few jobs or most nodes are their own class (each priced on its own):
    then the class path's work is once per job or per node, and its numpy calls over the
    whole fleet cost more than they save."""
    if snap.size >= SPARSE_MIN_NODES and (
        len(jobs) < SPARSE_MIN_JOBS or snap.classes > SPARSE_MIN_CLASS_SHARE * snap.size
    ):
        return True
    if len(jobs) < SPARSE_MIN_JOBS:
        return False
    identities = {
        (id(j.resources), id(j.placement), id(j.pricing), id(j.objective), j.replicas) for j in jobs
    }
    return len(identities) > SPARSE_MIN_CLASS_SHARE * len(jobs)


@dataclass(frozen=True, slots=True)
class Placed:
    """One job placed on this path (``Plan`` turns it into an ``Assignment``)."""

    index: int  # the job's position in the batch
    row: int
    total: float
    rtt_ms: float | None


@dataclass(slots=True)
class SparseResult:
    placed: list[Placed]
    failed: list[int]  # positions in the batch
    metrics: dict[int, JobMetric]  # by position
    work: dict[str, int]  # what was evaluated: pairs, locations, rescans


def fleet_columns(snap: Snapshot) -> tuple[tuple, np.ndarray, np.ndarray]:  # type: ignore[type-arg]
    """The snapshot's fixed columns as the kernels take them (``kernels``' blocks), cached
    on it (plan's scratch copies share the cache), the snapshot row of each position, and
    the rows of nodes that are not available.

    Positions run by location, then kind, then price and node id: a near block
    is a run of them, and a location a run of near blocks.
    """
    cached = getattr(snap, "_sparse_columns", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    kind = _kind_of(snap)
    order = np.lexsort((snap.node_id, snap.price, kind, snap.node_location)).astype(np.int64)
    columns = (
        snap.accelerator.astype(np.int16),
        snap.model.astype(np.int16),
        snap.vram_gib,
        snap.gpus_total,
        snap.tier.astype(np.int16),
        snap.region.astype(np.int32),
        snap.price,
        snap.reliability_score,
        snap.node_id,
    )
    # ... and each position's snapshot row: free GPUs are read in the snapshot's own order.
    nodes = (*(np.ascontiguousarray(c[order]) for c in columns), order)
    location, kind = snap.node_location[order], kind[order]
    positions = np.arange(snap.size, dtype=np.int64)
    near = _blocks(nodes, positions, (location, kind))
    far = _blocks(nodes, np.lexsort((nodes[8], nodes[6], kind)).astype(np.int64), (kind,))
    block_location = location[near[9][near[6]]] if snap.size else np.zeros(0, np.int64)
    loc_blocks = np.bincount(block_location, minlength=snap.locations).astype(np.int64)
    locations = (
        np.ascontiguousarray(snap.location_xyz),
        snap.location_access_rtt_ms,
        snap.location_rtt_bias_ms,
        np.maximum(snap.location_network, 0).astype(np.int64),
        _starts(loc_blocks),
        loc_blocks,
        np.bincount(location, minlength=snap.locations).astype(np.int64),
        location.astype(np.int64),
    )
    fleet = (nodes, locations, near, far, snap.price_ref, ACCESS_RTT_BY_CODE)
    cached = (fleet, order, np.flatnonzero(~snap.available))
    snap._sparse_columns = cached  # type: ignore[attr-defined]
    return cached


def _kind_of(snap: Snapshot) -> np.ndarray:
    """Per row: its kind, the class without the price."""
    if snap.size == 0:
        return np.zeros(0, np.int64)
    columns = [snap.accelerator, snap.model, snap.vram_gib, snap.gpus_total, snap.tier, snap.region]
    _, kind = np.unique(np.rec.fromarrays(columns), return_inverse=True)
    return kind.reshape(-1).astype(np.int64)


def _starts(count: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)


def _blocks(nodes: tuple, order: np.ndarray, keys: tuple) -> tuple:  # type: ignore[type-arg]
    """Blocks over ``order`` (positions), which runs of equal ``keys`` (indexed by position)
    make: each block's kind, start and size, best reliability, and the positions and prices
    in block order."""
    accel, model, vram, gpus_total, tier, region, price, reliability = nodes[:8]
    n = len(order)
    if n:
        change = np.zeros(n, np.bool_)
        change[0] = True
        for key in keys:
            change[1:] |= key[order][1:] != key[order][:-1]
        start = np.flatnonzero(change).astype(np.int64)
    else:
        start = np.zeros(0, np.int64)
    count = np.diff(np.append(start, n)).astype(np.int64)
    first = order[start]
    rel_max = np.maximum.reduceat(reliability[order], start) if n else np.zeros(0)
    return (
        accel[first], model[first], vram[first], gpus_total[first], tier[first], region[first],
        start, count, rel_max, order, np.ascontiguousarray(price[order]),
    )  # fmt: skip


def _tallies(
    blocks: tuple,  # type: ignore[type-arg]
    pos_row: np.ndarray,
    free: np.ndarray,
    gpus: np.ndarray,
) -> tuple:  # type: ignore[type-arg]
    """Running counts along the blocks' order of offline nodes, and of nodes with room and
    replica slots for each GPU size the batch asks for: a price prefix's counts are two
    lookups. A batch of a few jobs gets none: the scan counts its prefixes itself."""
    if len(gpus) < TALLY_MIN_JOBS:
        none = np.zeros(0, np.int64)
        return none, none.reshape(0, 0), none.reshape(0, 0), none
    free_b = free[pos_row[blocks[9]]]
    sizes = np.unique(gpus)
    slot = np.zeros(int(sizes.max(initial=1)) + 1, np.int64)
    slot[sizes] = np.arange(len(sizes))
    room = np.zeros((max(len(sizes), 1), len(free_b) + 1), np.int64)
    slots = np.zeros_like(room)
    for n, g in enumerate(sizes.tolist()):
        room[n, 1:] = np.cumsum(free_b >= g)
        slots[n, 1:] = np.cumsum(np.maximum(free_b, 0) // g)
    offline = np.concatenate([[0], np.cumsum(free_b < 0)]).astype(np.int64)
    return offline, room, slots, slot


def job_columns(specs: Sequence[JobSpec], snap: Snapshot) -> tuple:  # type: ignore[type-arg]
    """The jobs' requirements as columns; set-valued ones as rows of small lookup tables."""
    n = len(specs)
    gpus = np.empty(n, np.int32)
    accel = np.empty(n, np.int16)
    vram = np.full(n, -np.inf)
    cap = np.full(n, np.inf)
    budget = np.full(n, np.nan)
    near = np.zeros(n, np.bool_)
    lat, lon = np.zeros(n), np.zeros(n)
    weights = np.empty((n, 3))
    models = _Tables(len(MODEL_CODES) + 1)
    tiers = _Tables(len(TIER_CODES) + 1)
    regions = _Tables(len(snap.regions) + 1)
    models_row, tiers_row, regions_row = (np.full(n, -1, np.int32) for _ in range(3))
    for i, spec in enumerate(specs):
        res, place = spec.resources, spec.placement
        gpus[i], accel[i] = res.gpus, ACCELERATOR_CODES[res.accelerator]
        if res.vram_gib is not None:
            vram[i] = res.vram_gib
        if res.gpu_models:
            models_row[i] = models.row(res.gpu_models, lambda m: [MODEL_CODES[x] for x in m])
        if place.tiers:
            tiers_row[i] = tiers.row(place.tiers, lambda t: [TIER_CODES[x] for x in t])
        if place.regions:
            regions_row[i] = regions.row(place.regions, None, snap.region_table)
        price_cap = spec.pricing.max_usd_per_gpu_hour
        if price_cap is not None:
            cap[i] = float(price_cap)
        if place.near:
            near[i], lat[i], lon[i] = True, place.near[0].lat, place.near[0].lon
        if place.max_latency_ms is not None:
            budget[i] = place.max_latency_ms
        weights[i] = spec.objective.normalized()
    xyz = np.ascontiguousarray(unit_vectors(lat, lon).reshape(n, 3))
    return (
        gpus, accel, models_row, models.table(), vram, tiers_row, tiers.table(),
        regions_row, regions.table(), cap, budget, near, xyz, weights,
    )  # fmt: skip


class _Tables:
    """Distinct sets (of models, tiers, regions) as rows of a boolean table over codes."""

    def __init__(self, width: int) -> None:
        self.width, self.rows, self.index = width, [], {}  # type: ignore[var-annotated]

    def row(self, key: tuple, codes, table=None) -> int:  # type: ignore[no-untyped-def, type-arg]
        found = self.index.get(key)
        if found is None:
            if table is not None:
                line = table(key)
            else:
                line = np.zeros(self.width, np.bool_)  # the last entry: unknown code -1
                line[codes(key)] = True
            found = self.index[key] = len(self.rows)
            self.rows.append(line)
        return found  # type: ignore[no-any-return]

    def table(self) -> np.ndarray:
        """The rows, then one of all true: row -1, for a job that sets no such constraint."""
        return np.ascontiguousarray(np.stack([*self.rows, np.ones(self.width, np.bool_)]))


def feasible_counts(specs: Sequence[JobSpec], snap: Snapshot) -> tuple[list[int], dict[str, int]]:
    """How many nodes pass each job's static checks, by the per-job scan (nothing placed),
    and what the scan evaluated to find out: a location check per place for a job with
    users, a block check per kind in reach, and the nodes it scored for its candidates."""
    from scheduler import kernels

    n = len(specs)
    jobs = job_columns(specs, snap)
    fixed, _, offline = fleet_columns(snap)
    free = snap.gpus_free.copy()
    free[offline] = -1
    fleet = _with_tallies(fixed, free, jobs[0])
    stats = np.empty((n, kernels.STATS), np.int64)
    out = (
        np.empty((n, CANDIDATES), np.int64), np.empty((n, CANDIDATES)),
        np.empty((n, CANDIDATES)), np.empty((n, len(CHECK_NAMES)), np.int64), stats,
    )  # fmt: skip
    kernels.scan_all(
        np.arange(n, dtype=np.int64), jobs, fleet, free, out, kernels.visit_space(fleet)
    )
    return stats[:, kernels.FEASIBLE].tolist(), {
        "location_checks": int(np.count_nonzero(jobs[11])) * snap.locations,
        "block_checks": int(stats[:, kernels.BLOCKS].sum()),
        "nodes_scored": int(stats[:, kernels.SCORED].sum()),
    }


def _resolve(
    size: int,
    where: _Where,
    order: np.ndarray,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
    first: np.ndarray,
    positions: Callable[[int], np.ndarray],
) -> int:
    """Place the batch's jobs of one GPU size again, by a min-cost flow over every (job,
    node) pair that passes the static checks, given where the other sizes are; returns how
    many it placed. Their greedy placements are a solution of the same flow, so it places
    at least as many of them, and then at the best total: for a batch of one size that is
    exact, as the class path's flow is, and with several sizes each is made exact given
    the others.

        source --1--> job --1--> node --(free // size)--> sink

    Arc costs are how far each pair's total falls short of a perfect one, and
    demand left out flows source -> sink at a cost above any chain of moves
    (``flow.unplaced_cost``): one solve places as many as it can, then at the
    best total.
    """
    from ortools.graph.python import min_cost_flow

    from scheduler import kernels

    gpus, pos_row = jobs[0], fleet[0][9]
    members = order[(gpus[order] == size) & (first[order, kernels.FEASIBLE] > 0)]
    if len(members) == 0:
        return 0
    held = members[where.position[members] >= 0]
    np.add.at(free, pos_row[where.position[held]], size)  # let go of their nodes
    where.position[members] = -1
    pairs = [positions(int(j)) for j in members]
    job_of = np.repeat(np.arange(len(members)), [len(p) for p in pairs])
    pos = np.concatenate(pairs)
    room = free[pos_row[pos]] >= size
    job_of, pos = job_of[room], pos[room]
    if len(pos) == 0:
        return 0
    nodes, node_of = np.unique(pos, return_inverse=True)
    n_jobs, n_nodes = len(members), len(nodes)
    sink = 1 + n_jobs + n_nodes
    totals = kernels.score_pairs(members[job_of], pos, jobs, fleet, free)
    arc_costs = np.round((SCORE_CEILING - totals) * COST_SCALE).astype(np.int64)
    solver = min_cost_flow.SimpleMinCostFlow()
    arcs = solver.add_arcs_with_capacity_and_unit_cost(
        np.concatenate([np.zeros(n_jobs, np.int64), 1 + job_of, 1 + n_jobs + np.arange(n_nodes)]),
        np.concatenate([1 + np.arange(n_jobs), 1 + n_jobs + node_of, np.full(n_nodes, sink)]),
        np.concatenate([np.ones(n_jobs + len(pos), np.int64), free[pos_row[nodes]] // size]),
        np.concatenate([np.zeros(n_jobs, np.int64), arc_costs, np.zeros(n_nodes, np.int64)]),
    )
    solver.add_arc_with_capacity_and_unit_cost(0, sink, n_jobs, unplaced_cost(arc_costs, n_jobs))
    solver.set_nodes_supplies(np.array([0, sink]), np.array([n_jobs, -n_jobs]))
    if solver.solve() != solver.OPTIMAL:
        raise RuntimeError("min-cost flow over the feasible pairs failed")
    used = solver.flows(arcs)[n_jobs : n_jobs + len(pos)] > 0
    placed, at = members[job_of[used]], pos[used]
    for j, p in zip(placed.tolist(), at.tolist(), strict=True):
        where.total[j], where.rtt[j] = kernels.score_at(j, p, jobs, fleet, free)
    where.position[placed] = at
    np.subtract.at(free, pos_row[at], size)
    return len(placed)


def _flow_rounds(
    where: _Where,
    order: np.ndarray,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
    first: np.ndarray,
    positions: Callable[[int], np.ndarray],
) -> int:
    """Re-solve each GPU size by a flow given the others (``_resolve``); returns how many
    the last round placed. One size: one exact solve. Several: rounds from the greedy's
    plan, largest size first (big jobs keep whole nodes), and again from nothing,
    smallest first (more jobs fit when small ones are short of room); the plan that
    places more, then scores more per GPU, is kept. No round places fewer of a size than the
    plan it starts from holds, so the first start cannot lose what the greedy placed."""
    gpus, pos_row = jobs[0], fleet[0][9]
    sizes = sorted(set(gpus.tolist()), reverse=True)

    def rounds(first_pass: list[int]) -> int:
        placed = sum(
            _resolve(z, where, order, jobs, fleet, free, first, positions) for z in first_pass
        )
        for _ in range(FLOW_ROUNDS - 1 if len(sizes) > 1 else 0):
            placed = sum(
                _resolve(z, where, order, jobs, fleet, free, first, positions) for z in sizes
            )
        return placed

    flowed = rounds(sizes)
    if len(sizes) == 1:
        return flowed
    kept = (where.copy(), free.copy(), flowed)
    held = np.flatnonzero(where.position >= 0)
    np.add.at(free, pos_row[where.position[held]], gpus[held])
    where.position[held] = -1
    flowed = rounds(sizes[::-1])
    if _standing(kept[0], gpus) >= _standing(where, gpus):
        where.restore(kept[0])
        free[:] = kept[1]
        flowed = kept[2]
    return flowed


def _standing(where: _Where, gpus: np.ndarray) -> tuple[int, float]:
    """How a plan ranks: jobs placed, then their scores weighed by GPUs. A score rates a
    price per GPU, so with a cost-only objective the weighed sum ranks plans by the
    total they pay; unweighed, two plans placing as many jobs ranked 2.9 % dearer first."""
    placed = where.position >= 0
    return int(placed.sum()), float((gpus[placed] * where.total[placed]).sum())


def _with_tallies(fixed: tuple, free: np.ndarray, gpus: np.ndarray) -> tuple:  # type: ignore[type-arg]
    pos_row = fixed[0][9]
    return (
        *fixed,
        _tallies(fixed[2], pos_row, free, gpus),
        _tallies(fixed[3], pos_row, free, gpus),
    )


def place(
    specs: Sequence[JobSpec],
    snap: Snapshot,
    *,
    regret: bool = True,
    repair: bool = True,
    optimal: bool = False,
) -> SparseResult:
    """Scan and place ``specs`` (in priority order) on ``snap``'s free GPUs. Bookings are
    made on a copy of them: ``snap`` is only read.

    ``optimal`` then places each GPU size again by a min-cost flow over its
    feasible pairs, given the others (``_resolve``), when there are at most
    ``FLOW_MAX_ARCS`` of them."""
    from scheduler import kernels  # numba compiles (or loads) on first use only

    n = len(specs)
    jobs = job_columns(specs, snap)
    fixed, snap_rows, offline = fleet_columns(snap)
    free = snap.gpus_free.copy()  # by snapshot row; -1 marks a node that is not available
    free[offline] = -1
    fleet = _with_tallies(fixed, free, jobs[0])
    rows = np.empty((n, CANDIDATES), np.int64)
    total = np.empty((n, CANDIDATES))
    rtt = np.empty((n, CANDIDATES))
    counts = np.empty((n, len(CHECK_NAMES)), np.int64)
    stats = np.empty((n, kernels.STATS), np.int64)
    out = (rows, total, rtt, counts, stats)
    everyone = np.arange(n, dtype=np.int64)
    visit = kernels.visit_space(fleet)
    kernels.scan_all(everyone, jobs, fleet, free, out, visit)
    first = stats.copy()  # what each job met before anything was booked
    if regret:
        # Regret: best total minus the next best; infinite with fewer than two candidates.
        two = rows[:, 1] >= 0
        regrets = np.full(n, np.inf)
        regrets[two] = total[two, 0] - total[two, 1]
        order = np.lexsort((everyone, -regrets, stats[:, kernels.SLOTS])).astype(np.int64)
    else:
        order = everyone
    chosen = np.full(n, -1, np.int64)
    rescans = kernels.assign(order, jobs, fleet, free, out, visit, chosen)
    where = _Where.of(rows, total, rtt, chosen)
    positions = _positions(jobs, fleet, free, visit, first)
    moved = _repair(where, order, positions, first, jobs, fleet, free) if repair else 0
    flowed = 0
    if optimal and flow_pays_off(first):
        flowed = _flow_rounds(where, order, jobs, fleet, free, first, positions)
    placed_at = np.flatnonzero(where.position >= 0)
    taken = snap_rows[where.position[placed_at]]  # positions -> snapshot rows
    rows = np.where(rows >= 0, snap_rows[np.maximum(rows, 0)], -1)
    failed = np.flatnonzero(where.position < 0)
    if len(failed):  # what they face now that the batch is booked (rows unused from here)
        fleet = _with_tallies(fixed, free, jobs[0])
        kernels.scan_all(failed.astype(np.int64), jobs, fleet, free, out, visit)
    result = SparseResult([], failed.tolist(), {}, {})
    _collect(result, specs, snap, rows, total, rtt, counts, stats, placed_at)
    for i, row, score, at_rtt in zip(
        placed_at.tolist(),
        taken.tolist(),
        where.total[placed_at].tolist(),
        where.rtt[placed_at].tolist(),
        strict=True,
    ):
        result.placed.append(Placed(i, row, score, None if at_rtt != at_rtt else at_rtt))
    _explain_failed(result, specs, snap, counts, stats)
    near = int(np.count_nonzero(jobs[11]))
    result.work = {
        "jobs": n,
        # What was evaluated: one dot product per location for a job with users, the static
        # checks once per block, and a score per node that could rank; and what it decided.
        "location_checks": near * snap.locations,
        "block_checks": int(first[:, kernels.BLOCKS].sum()),
        "nodes_scored": int(first[:, kernels.SCORED].sum()),
        "pairs_decided": n * snap.size,
        "pairs_feasible": int(first[:, kernels.FEASIBLE].sum()),
        "rescans": int(rescans),
        "placed_by_flow": flowed,
        "repair_moves": moved,
    }
    return result


@dataclass(slots=True)
class _Where:
    """Per job: the position it holds (-1: none), its total and RTT there."""

    position: np.ndarray
    total: np.ndarray
    rtt: np.ndarray

    @classmethod
    def of(cls, rows: np.ndarray, total: np.ndarray, rtt: np.ndarray, chosen: np.ndarray) -> _Where:
        jobs = np.arange(len(chosen))
        pick = np.maximum(chosen, 0)
        placed = chosen >= 0
        return cls(
            np.where(placed, rows[jobs, pick], -1),
            np.where(placed, total[jobs, pick], np.nan),
            np.where(placed, rtt[jobs, pick], np.nan),
        )

    def copy(self) -> _Where:
        return _Where(self.position.copy(), self.total.copy(), self.rtt.copy())

    def restore(self, other: _Where) -> None:
        self.position[:], self.total[:], self.rtt[:] = other.position, other.total, other.rtt


def flow_pays_off(first: np.ndarray) -> bool:
    """The flows take every feasible pair: affordable up to ``FLOW_MAX_ARCS`` of them."""
    from scheduler import kernels

    return int(first[:, kernels.FEASIBLE].sum()) <= FLOW_MAX_ARCS


def _positions(
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
    visit: np.ndarray,
    first: np.ndarray,
) -> Callable[[int], np.ndarray]:
    """Every position that passes job ``j``'s static checks, scanned once and kept."""
    from scheduler import kernels

    scratch = (
        np.empty((1, 1), np.int64), np.empty((1, 1)), np.empty((1, 1)),
        np.empty((1, kernels.CHECKS), np.int64), np.empty((1, kernels.STATS), np.int64),
    )  # fmt: skip
    kept: dict[int, np.ndarray] = {}

    def positions(j: int) -> np.ndarray:
        found = kept.get(j)
        if found is None:
            buf = np.empty(int(first[j, kernels.FEASIBLE]), np.int64)
            if len(buf):
                kernels.scan(j, jobs, fleet, free, scratch, 0, visit, buf)
            found = kept[j] = buf
        return found

    return positions


def _repair(
    where: _Where,
    order: np.ndarray,
    feasible: Callable[[int], np.ndarray],
    first: np.ndarray,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
) -> int:
    """For each job left out that some node could take, search for a chain of moves that
    makes room (``assign._augment``, over positions); returns how many jobs moved. The
    search is bounded by positions looked at, as the class path's is."""
    from scheduler import kernels

    gpus, pos_row = jobs[0], fleet[0][9]
    on: dict[int, list[int]] = {}
    for j in np.flatnonzero(where.position >= 0).tolist():
        on.setdefault(int(where.position[j]), []).append(j)
    if not on:  # nothing placed: nothing to move out of the way
        return 0
    budget, moved = REPAIR_TOTAL_VISITS, 0
    can = first[:, kernels.FEASIBLE] > 0  # scanned for its positions only when its turn comes
    left_out = order[(where.position[order] < 0) & can[order]]
    for start in left_out.tolist():
        if budget <= 0:
            break
        parent: dict[int, tuple[int, int]] = {}
        seen_jobs, seen = {start}, set()
        queue: deque[tuple[int, int]] = deque([(start, -1)])
        visits, found = 0, None
        while queue and found is None and visits <= REPAIR_MAX_VISITS:
            job, current = queue.popleft()
            rows = feasible(job)
            room = rows[(free[pos_row[rows]] >= gpus[job]) & (rows != current)]
            if len(room):
                found = (job, int(room[0]))
                break
            for r in rows.tolist():
                visits += 1
                if r in seen or r == current:
                    continue
                seen.add(r)
                for other in on.get(r, ()):
                    if other not in seen_jobs and free[pos_row[r]] + gpus[other] >= gpus[job]:
                        seen_jobs.add(other)
                        parent[other] = (job, r)
                        queue.append((other, r))
        budget -= visits
        if found is None:
            continue
        job, target = found
        while True:  # the last job into the free position, each parent into the one freed
            old = int(where.position[job])
            if old >= 0:
                free[pos_row[old]] += gpus[job]
                on[old].remove(job)
            where.total[job], where.rtt[job] = kernels.score_at(job, target, jobs, fleet, free)
            free[pos_row[target]] -= gpus[job]
            where.position[job] = target
            on.setdefault(target, []).append(job)
            moved += 1
            if job == start:
                break
            job, target = parent[job]
    return moved


def _metric(spec: JobSpec, snap: Snapshot, counts: list[int], feasible: int) -> JobMetric:
    filtered = {
        check_label(name, spec): c for name, c in zip(CHECK_NAMES, counts, strict=True) if c
    }
    return JobMetric(nodes_evaluated=snap.size, filtered=filtered, feasible=feasible)


def _collect(
    result: SparseResult,
    specs: Sequence[JobSpec],
    snap: Snapshot,
    rows: np.ndarray,
    total: np.ndarray,
    rtt: np.ndarray,
    counts: np.ndarray,
    stats: np.ndarray,
    placed_at: np.ndarray,
) -> None:
    """Each placed job's record with its top candidates (columns first:
    a batch makes tens of thousands)."""
    top = rows[placed_at, :TOP_CANDIDATES]
    valid = top >= 0
    safe = np.where(valid, top, 0)
    price = snap.price[safe]
    top_rtt = rtt[placed_at, :TOP_CANDIDATES]
    budget = np.array([specs[i].placement.max_latency_ms or LATENCY_REF_MS for i in placed_at])
    latency = np.maximum(0.0, 100.0 * (1.0 - top_rtt / budget[:, None]))
    has_rtt = ~np.isnan(top_rtt)
    columns = zip(
        snap.node_id[safe].tolist(),
        np.round(total[placed_at, :TOP_CANDIDATES], 2).tolist(),
        np.round(100.0 * (1.0 - price / snap.price_ref), 2).tolist(),
        np.round(np.where(has_rtt, latency, 100.0), 2).tolist(),
        np.round(snap.reliability_score[safe], 2).tolist(),
        np.round(top_rtt, 2).tolist(),
        has_rtt.tolist(),
        price.tolist(),
        valid.sum(axis=1).tolist(),
        strict=True,
    )
    job_counts, feasible = counts[placed_at].tolist(), stats[placed_at, 0].tolist()
    for n, (i, column) in enumerate(zip(placed_at.tolist(), columns, strict=True)):
        ids, totals, costs, latencies, reliabilities, rtts, near, prices, valid_n = column
        metric = _metric(specs[i], snap, job_counts[n], feasible[n])
        metric.candidates = [
            Candidate(
                node_id=ids[c],
                total=totals[c],
                scores={"cost": costs[c], "latency": latencies[c], "reliability": reliabilities[c]},
                rtt_ms=rtts[c] if near[c] else None,
                price_usd_per_gpu_hour=prices[c],
            )
            for c in range(valid_n)
        ]
        result.metrics[i] = metric


def _explain_failed(
    result: SparseResult,
    specs: Sequence[JobSpec],
    snap: Snapshot,
    counts: np.ndarray,
    stats: np.ndarray,
) -> None:
    """The record of each job left out: what its constraints rejected, what fits is doing."""
    from scheduler import kernels

    # Suggestions take a pass over the whole fleet per constraint: for jobs that can never
    # fit, and for waiting ones only when a handful wait and the fleet is small enough
    # that a single decision stays quick.
    suggest = len(result.failed) <= SUGGEST_FOR_JOBS and snap.size <= SUGGEST_MAX_NODES
    for i in result.failed:
        metric = _metric(specs[i], snap, counts[i].tolist(), int(stats[i, kernels.FEASIBLE]))
        metric.offline = int(stats[i, kernels.OFFLINE])
        metric.exhausted = metric.feasible - metric.offline - int(stats[i, kernels.ROOM])
        if suggest or metric.never_fits:
            metric.suggestions = suggestions(Request.of(specs[i]), snap)
        result.metrics[i] = metric
