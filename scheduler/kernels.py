"""The compiled loops of the per-job path (``scheduler.sparse``): scan a job, assign a batch.

The fleet is laid out in *blocks*: nodes of one kind (hardware, tier, region:
everything but the price) sorted by price, then node id. Near blocks are a
kind at one location (a cell without the price), for jobs with users; far
blocks are a kind anywhere, for jobs without. A job's static checks run once
per block, its price cap is a binary search in the block, and only nodes that
could still rank are scored: along a block the price rises, so the cost score
falls, and once a node's best possible total is below the job's last
candidate the rest of the block cannot rank either. Counts of what passes
(offline, with room, replica slots) come from running tallies, two lookups
per block.

numba compiles these once per machine (``cache=True`` keeps the machine code
beside this file). They follow ``feasibility``, ``latency`` and ``scoring``
formula for formula, in the same order of operations, so both paths score a
node alike.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from scheduler.latency import (
    DOT_ROUNDING,
    EARTH_RADIUS_KM,
    FIBRE_KM_PER_MS,
    KM_PER_SPARE_MS,
    MIN_RTT_MS,
    ROUTE_STRETCH,
)
from scheduler.scoring import LATENCY_REF_MS, SPREAD_POINTS

# Checks, in the order their first rejections are counted on this path.
LATENCY, ACCELERATOR, GPU_MODEL, VRAM, GPUS, TIER, REGION, PRICE = range(8)
CHECKS = 8
# What a scan tallies per job: nodes that pass every static check, those offline, those
# with room, replica slots free, nodes scored one by one, blocks checked as a whole,
# locations whose reach was computed.
FEASIBLE, OFFLINE, ROOM, SLOTS, SCORED, BLOCKS, PLACES = range(7)
STATS = 7
PRICE_SLACK = 1e-12  # as feasibility's price check: a cap equal to the price admits it


@njit(cache=True, nogil=True, inline="always")
def _better(t1: float, p1: float, n1: int, t2: float, p2: float, n2: int) -> bool:
    """Ranked before: higher total, then cheaper, then the lower node id (``best_rows``)."""
    if t1 != t2:
        return t1 > t2
    if p1 != p2:
        return p1 < p2
    return n1 < n2


@njit(cache=True, nogil=True, inline="always")
def _min_dot(spare_ms: float) -> float:
    """The least dot product of unit vectors in reach with ``spare_ms`` of RTT left
    (``latency.min_dot_for_distance``); 2.0, above any, when nothing is."""
    if spare_ms < 0:
        return 2.0
    return math.cos(min(spare_ms * KM_PER_SPARE_MS / EARTH_RADIUS_KM, math.pi)) - DOT_ROUNDING


@njit(cache=True, nogil=True)
def scan(
    j: int,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
    out: tuple,  # type: ignore[type-arg]
    i: int,
    visit: np.ndarray,
    collect: np.ndarray,
) -> None:
    """Job ``j`` against the fleet: first rejections per check, tallies, and its best
    nodes with room, into row ``i`` of ``out`` (rows, totals, RTTs, counts, stats).

    ``visit`` is scratch space for the blocks in reach; a non-empty ``collect``
    receives every position that passes the static checks (as many as the
    feasible tally). Everything is in this one function: numba counts the
    references of every array passed to a helper, atomically, which cost more
    than the checks themselves.
    """
    (gpus_j, accel_j, models_row, models_table, vram_j, tiers_row, tiers_table) = jobs[:7]
    (regions_row, regions_table, cap_j, budget_j, near_j, xyz_j, weights_j) = jobs[7:]
    (nodes, locations, near_blocks, far_blocks, price_ref, access_by_network) = fleet[:6]
    (gpus_total, price, rel_score, node_id, pos_row) = (
        nodes[3],
        nodes[6],
        nodes[7],
        nodes[8],
        nodes[9],
    )
    (loc_xyz, loc_access, loc_bias, loc_network, loc_first, loc_blocks, loc_count) = locations[:7]
    rows, totals, rtts, counts, out_stats = out
    k = rows.shape[1]
    last = k - 1
    for c in range(k):
        rows[i, c], totals[i, c], rtts[i, c] = -1, -np.inf, np.nan
    rejected = np.zeros(CHECKS, np.int64)
    stats = np.zeros(STATS, np.int64)
    g, accel, vram, cap = gpus_j[j], accel_j[j], vram_j[j], cap_j[j] + PRICE_SLACK
    model_ok = models_table[models_row[j]]  # row -1: the table's last row, all true
    tier_ok, region_ok = tiers_table[tiers_row[j]], regions_table[regions_row[j]]
    wc, wl, wr = weights_j[j, 0], weights_j[j, 1], weights_j[j, 2]
    near = near_j[j]
    budget = budget_j[j]
    has_budget = not math.isnan(budget)
    reference = budget if has_budget else LATENCY_REF_MS
    ux, uy, uz = xyz_j[j, 0], xyz_j[j, 1], xyz_j[j, 2]
    # 1. Which blocks to visit: every kind for a job without users; else the blocks at
    # the locations in its reach (one dot product per location; ``visit`` holds the
    # block and its location).
    if near:
        blocks, tallies = near_blocks, fleet[6]
        reach = np.empty(access_by_network.shape[0])
        for net in range(reach.shape[0]):  # least dot product in reach, per access network
            reach[net] = _min_dot(budget - access_by_network[net])
        n_visit = 0
        for loc in range(loc_first.shape[0]):
            dot = loc_xyz[loc, 0] * ux + loc_xyz[loc, 1] * uy + loc_xyz[loc, 2] * uz
            if has_budget:
                if loc_bias[loc] == 0.0:
                    threshold = reach[loc_network[loc]]
                else:  # a measured bias: a threshold of its own
                    threshold = _min_dot(budget - loc_access[loc] - loc_bias[loc])
                if dot < threshold:
                    rejected[LATENCY] += loc_count[loc]
                    continue
            stats[PLACES] += 1
            for b in range(loc_first[loc], loc_first[loc] + loc_blocks[loc]):
                visit[n_visit, 0], visit[n_visit, 1] = b, loc
                n_visit += 1
    else:
        blocks, tallies = far_blocks, fleet[7]
        n_visit = far_blocks[6].shape[0]
    (b_accel, b_model, b_vram, b_gpus, b_tier, b_region, b_start, b_count) = blocks[:8]
    (b_rel_max, b_pos, b_price) = blocks[8:]
    cum_offline, cum_room, cum_slots, g_slot = tallies
    gs = g_slot[g] if g < g_slot.shape[0] else 0
    stats[BLOCKS] = n_visit
    latency_loc, latency_score, rtt = -1, 100.0, np.nan
    # 2. Each block: the static checks once, the price cap by bisection.
    for t in range(n_visit):
        b = visit[t, 0] if near else t
        n = b_count[b]
        if b_accel[b] != accel:
            rejected[ACCELERATOR] += n
            continue
        if not model_ok[b_model[b]]:
            rejected[GPU_MODEL] += n
            continue
        if b_vram[b] < vram:
            rejected[VRAM] += n
            continue
        if b_gpus[b] < g:
            rejected[GPUS] += n
            continue
        if not tier_ok[b_tier[b]]:
            rejected[TIER] += n
            continue
        if not region_ok[b_region[b]]:
            rejected[REGION] += n
            continue
        start = b_start[b]
        lo, hi = start, start + n
        while lo < hi:
            mid = (lo + hi) // 2
            if b_price[mid] <= cap:
                lo = mid + 1
            else:
                hi = mid
        m = lo - start
        rejected[PRICE] += n - m
        if m == 0:
            continue
        # 3. The feasible prefix: tallies by lookup, then its nodes with room, best first.
        if collect.shape[0]:
            for p in range(start, start + m):
                collect[stats[FEASIBLE] + p - start] = b_pos[p]
        stats[FEASIBLE] += m
        if cum_offline.shape[0]:
            stats[OFFLINE] += cum_offline[start + m] - cum_offline[start]
            stats[ROOM] += cum_room[gs, start + m] - cum_room[gs, start]
            stats[SLOTS] += cum_slots[gs, start + m] - cum_slots[gs, start]
        else:  # no tallies (a few jobs: cheaper to count than to sum the whole fleet)
            for p in range(start, start + m):
                f = free[pos_row[b_pos[p]]]
                if f < 0:
                    stats[OFFLINE] += 1
                elif f >= g:
                    stats[ROOM] += 1
                    stats[SLOTS] += f // g
        if near and visit[t, 1] != latency_loc:  # the RTT once per location
            loc = visit[t, 1]
            latency_loc = loc
            dot = loc_xyz[loc, 0] * ux + loc_xyz[loc, 1] * uy + loc_xyz[loc, 2] * uz
            d = math.acos(min(max(dot, -1.0), 1.0)) * EARTH_RADIUS_KM
            rtt = max(
                loc_access[loc] + 2 * d * ROUTE_STRETCH / FIBRE_KM_PER_MS + loc_bias[loc],
                MIN_RTT_MS,
            )
            latency_score = max(0.0, 100.0 * (1.0 - rtt / reference))
        ceiling = wl * latency_score + wr * b_rel_max[b] + SPREAD_POINTS
        for p in range(start, start + m):
            # Full: stop where even a perfect node could not rank.
            best_here = wc * (100.0 * (1.0 - b_price[p] / price_ref)) + ceiling
            if rows[i, last] >= 0 and best_here < totals[i, last]:
                break
            r = b_pos[p]
            f = free[pos_row[r]]
            if f < g:
                continue
            stats[SCORED] += 1
            cost = 100.0 * (1.0 - price[r] / price_ref)
            part = wc * cost + wl * latency_score
            total = part + wr * rel_score[r] + SPREAD_POINTS * f / max(gpus_total[r], 1)
            # Insert into the ranked candidates (total, then cheaper, then node id).
            c = last
            if rows[i, c] >= 0 and not _better(
                total, price[r], node_id[r], totals[i, c], price[rows[i, c]], node_id[rows[i, c]]
            ):
                continue
            while c > 0:
                prev = rows[i, c - 1]
                if prev >= 0 and not _better(
                    total, price[r], node_id[r], totals[i, c - 1], price[prev], node_id[prev]
                ):
                    break
                rows[i, c], totals[i, c], rtts[i, c] = prev, totals[i, c - 1], rtts[i, c - 1]
                c -= 1
            rows[i, c], totals[i, c], rtts[i, c] = r, total, rtt
    counts[i, :] = rejected
    out_stats[i, :] = stats


def visit_space(fleet: tuple) -> np.ndarray:  # type: ignore[type-arg]
    """Scratch space for ``scan``: room for every near block, and its location."""
    return np.empty((max(fleet[2][6].shape[0], 1), 2), np.int64)


@njit(cache=True, nogil=True)
def scan_all(
    order: np.ndarray, jobs: tuple, fleet: tuple, free: np.ndarray, out: tuple, visit: np.ndarray
) -> None:  # type: ignore[type-arg]
    """``scan`` for each job in ``order``, into the outputs' row of the same index."""
    nothing = np.empty(0, np.int64)
    for j in order:
        scan(j, jobs, fleet, free, out, j, visit, nothing)


@njit(cache=True, nogil=True)
def assign(
    order: np.ndarray,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
    out: tuple,  # type: ignore[type-arg]
    visit: np.ndarray,
    chosen: np.ndarray,
) -> int:
    """Place the jobs in ``order`` one by one, booking on ``free``; ``chosen[i]`` becomes the
    candidate column job ``i`` took, or -1. Returns how many jobs were scanned again.

    Each job takes the best candidate with room; among those within the spread
    term of it, the emptiest (``assign._pick_one``). A job whose candidates
    have all filled up is scanned again against what is left.
    """
    rows, total = out[0], out[1]
    gpus_j, gpus_total, pos_row = jobs[0], fleet[0][3], fleet[0][9]
    k = rows.shape[1]
    rescans = 0
    nothing = np.empty(0, np.int64)
    for i in order:
        g = gpus_j[i]
        best = -1
        for attempt in range(2):
            best, best_fill, floor = -1, 2.0, 0.0
            for c in range(k):
                r = rows[i, c]
                if r < 0:
                    break
                f = free[pos_row[r]]
                if f < g:
                    continue
                if best < 0:
                    floor = total[i, c] - SPREAD_POINTS
                elif total[i, c] < floor:
                    break
                fill = 1.0 - f / gpus_total[r]
                if fill < best_fill:
                    best, best_fill = c, fill
            if best >= 0 or attempt == 1 or rows[i, 0] < 0:
                break
            rescans += 1
            scan(i, jobs, fleet, free, out, i, visit, nothing)
        chosen[i] = best
        if best >= 0:
            free[pos_row[rows[i, best]]] -= g
    return rescans


@njit(cache=True, nogil=True)
def score_at(j: int, r: int, jobs: tuple, fleet: tuple, free: np.ndarray) -> tuple:  # type: ignore[type-arg]
    """(total, RTT) of job ``j`` on the node at position ``r``, as ``scan`` would rank it
    now (a job the repair moves gets the score of where it lands)."""
    weights, near = jobs[13], jobs[11][j]
    nodes, locations, price_ref = fleet[0], fleet[1], fleet[4]
    gpus_total, price, rel_score = nodes[3], nodes[6], nodes[7]
    latency_score, rtt = 100.0, np.nan
    if near:
        loc_xyz, loc_access, loc_bias, pos_location = (
            locations[0], locations[1], locations[2], locations[7],
        )  # fmt: skip
        loc = pos_location[r]
        ux, uy, uz = jobs[12][j, 0], jobs[12][j, 1], jobs[12][j, 2]
        dot = loc_xyz[loc, 0] * ux + loc_xyz[loc, 1] * uy + loc_xyz[loc, 2] * uz
        d = math.acos(min(max(dot, -1.0), 1.0)) * EARTH_RADIUS_KM
        rtt = max(
            loc_access[loc] + 2 * d * ROUTE_STRETCH / FIBRE_KM_PER_MS + loc_bias[loc], MIN_RTT_MS
        )
        budget = jobs[10][j]
        reference = LATENCY_REF_MS if math.isnan(budget) else budget
        latency_score = max(0.0, 100.0 * (1.0 - rtt / reference))
    cost = 100.0 * (1.0 - price[r] / price_ref)
    part = weights[j, 0] * cost + weights[j, 1] * latency_score
    f = free[nodes[9][r]]
    total = part + weights[j, 2] * rel_score[r] + SPREAD_POINTS * f / max(gpus_total[r], 1)
    return total, rtt


@njit(cache=True, nogil=True)
def score_pairs(
    job: np.ndarray,
    position: np.ndarray,
    jobs: tuple,  # type: ignore[type-arg]
    fleet: tuple,  # type: ignore[type-arg]
    free: np.ndarray,
) -> np.ndarray:
    """``score_at`` for each (job, position) pair: the totals of a flow's arcs."""
    out = np.empty(job.shape[0])
    for a in range(job.shape[0]):
        out[a] = score_at(job[a], position[a], jobs, fleet, free)[0]
    return out
