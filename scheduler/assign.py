"""Batch assignment, fast path: greedy with regret ordering, then augmenting repair.

1. Order request classes by how few options they have for their demand, then
   by regret (the loss if their best node is taken): the hardest go first,
   before easier jobs take the only nodes they could use.
2. Each job takes the best candidates that still have room: all its GPUs on
   one node (gang), its replicas on distinct nodes, all or none.
3. For each job left out, search for an augmenting path: placed jobs move to
   other nodes they fit, making room (as in bipartite matching). With one GPU
   size in the batch and the search not cut short, this places as many jobs as
   an exact solver would; the search is bounded (rows looked at) so a huge
   batch stays fast, and then it can place fewer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

from scheduler.batch import Batch, Group, row_score
from scheduler.offers import Snapshot
from scheduler.scoring import SPREAD_POINTS

SPREAD_WINDOW = 32  # candidates looked at, past the best, for an emptier equal node
# The repair's bounds are counts of rows looked at, not seconds, so a plan is the same on any
# machine: per augmenting search, and over the whole repair (~0.25 s here).
REPAIR_MAX_VISITS = 200_000
REPAIR_TOTAL_VISITS = 1_000_000


@dataclass(slots=True)
class Pick:
    """Where one job's replicas went: rows, and each one's total and RTT."""

    rows: list[int]
    totals: list[float]
    rtts: list[float | None]


@dataclass(slots=True)
class Assigned:
    """Where each job went, and which jobs found no room."""

    placed: dict[Hashable, tuple[Group, Pick]] = field(default_factory=dict)
    failed: list[tuple[Group, Hashable]] = field(default_factory=list)


def regret_order(batch: Batch, snap: Snapshot) -> list[Group]:
    """Fewest options per unit of demand first, then the largest regret, then submission order."""

    def key(g: Group) -> tuple[float, float, int]:
        return (g.options(snap) / max(g.demand, 1), -g.regret(), g.first_index)

    return sorted(batch.groups, key=key)


def assign_fast(
    batch: Batch, snap: Snapshot, *, regret: bool = True, repair: bool = True
) -> Assigned:
    result = Assigned()
    order = (
        regret_order(batch, snap) if regret else sorted(batch.groups, key=lambda g: g.first_index)
    )
    for group in order:
        for key in group.keys:
            pick = _pick(group, snap)
            if pick is None:
                result.failed.append((group, key))
            else:
                result.placed[key] = (group, pick)
    if repair and result.failed:
        _repair(result, snap)
    return result


def _pick(group: Group, snap: Snapshot) -> Pick | None:
    """The best ``replicas`` distinct candidates with room, taken; None if there are too few."""
    need, gpus = group.req.replicas, group.req.gpus
    if need == 1:
        return _pick_one(group, snap)
    while True:
        ranked = group.ranked
        chosen: list[int] = []
        i = group.pointer
        while len(chosen) < need and i < len(ranked.rows):
            if snap.gpus_free[ranked.rows[i]] >= gpus:
                chosen.append(i)
            i += 1
        if len(chosen) == need:
            break
        if ranked.complete:
            group.pointer = len(ranked.rows)  # capacity only shrinks: later jobs fail at once
            return None
        group.rank(snap, 2 * max(len(ranked.rows), need))
    for i in chosen:
        snap.take(int(ranked.rows[i]), gpus)
    _skip_full(group, snap)
    rows = ranked.rows
    return Pick(
        [int(rows[i]) for i in chosen],
        [float(ranked.total[i]) for i in chosen],
        [ranked.rtt_ms(group.cs, i) for i in chosen],
    )


def _skip_full(group: Group, snap: Snapshot) -> None:
    """Move the group's pointer past ranked rows with no room left for it (they never refill)."""
    rows, gpus = group.ranked.rows, group.req.gpus
    while group.pointer < len(rows) and snap.gpus_free[rows[group.pointer]] < gpus:
        group.pointer += 1


def _pick_one(group: Group, snap: Snapshot) -> Pick | None:
    """The best candidate with room; among those within the spread term of the best, the emptiest.

    Ranks were computed when the batch started, so jobs of one class would
    otherwise all pile onto the first of several equal nodes.
    """
    gpus = group.req.gpus
    while True:
        ranked = group.ranked
        rows, total = ranked.rows, ranked.total
        best, best_fill, floor = -1, 2.0, 0.0
        i = group.pointer
        end = min(len(rows), i + SPREAD_WINDOW)
        while i < end:
            row = rows[i]
            free = snap.gpus_free[row]
            if free >= gpus:
                if best < 0:
                    floor = total[i] - SPREAD_POINTS
                elif total[i] < floor:
                    break
                fill = 1.0 - free / snap.gpus_total[row]
                if fill < best_fill:
                    best, best_fill = i, fill
            i += 1
        if best >= 0:
            break
        if i < len(rows):
            group.pointer = i  # a whole window of full nodes: skip it
            continue
        if ranked.complete:
            group.pointer = len(rows)
            return None
        group.rank(snap, 2 * max(len(rows), 1))
    row = int(rows[best])
    snap.take(row, gpus)
    _skip_full(group, snap)
    return Pick([row], [float(total[best])], [ranked.rtt_ms(group.cs, best)])


# -- augmenting repair -----------------------------------------------------------------------------


def _repair(result: Assigned, snap: Snapshot) -> None:
    budget = REPAIR_TOTAL_VISITS
    on_row: dict[int, list[Hashable]] = {}
    for key, (group, pick) in result.placed.items():
        if group.req.replicas == 1:
            on_row.setdefault(pick.rows[0], []).append(key)
    still_failed = []
    for group, key in result.failed:
        placed = False
        if group.req.replicas == 1 and budget > 0:
            placed, visits = _augment(
                group, key, result, on_row, snap, min(budget, REPAIR_MAX_VISITS)
            )
            budget -= visits
        if not placed:
            still_failed.append((group, key))
    result.failed = still_failed


def _augment(
    group: Group,
    key: Hashable,
    result: Assigned,
    on_row: dict[int, list[Hashable]],
    snap: Snapshot,
    max_visits: int,
) -> tuple[bool, int]:
    """Breadth-first search for a chain of moves that makes room for ``key``; apply it.

    Returns whether it did, and how many rows it looked at (``max_visits + 1`` when it
    gave up at the bound).
    """
    parent: dict[Hashable, tuple[Hashable, int]] = {}
    seen_jobs, seen_rows = {key}, set()
    queue: deque[tuple[Group, Hashable, int]] = deque([(group, key, -1)])
    visits = 0
    while queue:
        g, job, current_row = queue.popleft()
        rows = g.feas.static_rows(snap)
        free = snap.gpus_free[rows]
        direct = rows[(free >= g.req.gpus) & (rows != current_row)]
        if len(direct):
            _apply(job, int(direct[0]), parent, result, on_row, snap, group, key)
            return True, visits
        for r in rows.tolist():
            visits += 1
            if visits > max_visits:
                return False, visits
            if r in seen_rows or r == current_row:
                continue
            seen_rows.add(r)
            room = int(snap.gpus_free[r])
            for other in on_row.get(r, ()):
                other_group = result.placed[other][0]
                if other not in seen_jobs and room + other_group.req.gpus >= g.req.gpus:
                    seen_jobs.add(other)
                    parent[other] = (job, r)
                    queue.append((other_group, other, r))
    return False, visits


def _apply(
    last: Hashable,
    free_row: int,
    parent: dict[Hashable, tuple[Hashable, int]],
    result: Assigned,
    on_row: dict[int, list[Hashable]],
    snap: Snapshot,
    start_group: Group,
    start_key: Hashable,
) -> None:
    """Shift every job on the path: the last into ``free_row``, each parent into the row freed."""
    job, target = last, free_row
    while True:
        group = start_group if job == start_key else result.placed[job][0]
        if job != start_key:
            old_row = result.placed[job][1].rows[0]
            snap.release(old_row, group.req.gpus)
            on_row[old_row].remove(job)
        snap.take(target, group.req.gpus)
        on_row.setdefault(target, []).append(job)
        total, rtt = row_score(group, snap, target)
        result.placed[job] = (group, Pick([target], [total], [rtt]))
        if job == start_key:
            return
        job, target = parent[job]
