"""Batch assignment, fast path: greedy with regret ordering, then augmenting repair.

1. Order request classes by how few options they have for their demand, then
   by regret (the loss if their best node is taken): the hardest go first,
   before easier jobs take the only nodes they could use.
2. Each job takes the best candidates that still have room: all its GPUs on
   one node (gang), its replicas on distinct nodes, all or none.
3. For each job left out, search for an augmenting path: a placed job moves to
   another node it fits, making room (as in bipartite matching). With one GPU
   size in the batch this places as many jobs as an exact solver would; the
   search is bounded so a huge batch stays fast.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field

import numpy as np

from scheduler.batch import Batch, Group
from scheduler.offers import Snapshot

REPAIR_BUDGET_S = 0.25
REPAIR_MAX_VISITS = 200_000  # rows looked at per augmenting search


@dataclass(slots=True)
class Assigned:
    """Where each job went (candidate indices into its group's ``scored``), and who failed."""

    placed: dict[Hashable, tuple[Group, list[int]]] = field(default_factory=dict)
    failed: list[tuple[Group, Hashable]] = field(default_factory=list)

    def score_sum(self) -> float:
        return float(sum(g.scored.total[i] for g, idx in self.placed.values() for i in idx))


def regret_order(batch: Batch, snap: Snapshot) -> list[Group]:
    """Fewest options per unit of demand first, then the largest regret, then submission order."""

    def key(g: Group) -> tuple[float, float, int]:
        return (g.options(snap) / max(g.demand, 1), -g.regret(), g.first_index)

    return sorted(batch.groups, key=key)


def submission_order(batch: Batch, snap: Snapshot) -> list[Group]:
    """Plain greedy, for comparison: groups in the order their first job arrived."""
    return sorted(batch.groups, key=lambda g: g.first_index)


def assign_fast(
    batch: Batch, snap: Snapshot, *, regret: bool = True, repair: bool = True
) -> Assigned:
    result = Assigned()
    for group in (regret_order if regret else submission_order)(batch, snap):
        for key in group.keys:
            picked = _pick(group, snap)
            if picked is None:
                result.failed.append((group, key))
            else:
                result.placed[key] = (group, picked)
    if repair and result.failed:
        _repair(result, snap)
    return result


def _pick(group: Group, snap: Snapshot) -> list[int] | None:
    """The best ``replicas`` distinct candidates with room, taken; None if there are too few."""
    need, gpus = group.req.replicas, group.req.gpus
    rows = group.scored.rows
    chosen: list[int] = []
    i = group.pointer
    while len(chosen) < need:
        if i >= len(group.order):
            if group.fully_ordered:
                return None
            group.ensure_ordered(snap)
            i = group.pointer
            chosen.clear()
            continue
        idx = int(group.order[i])
        if snap.gpus_free[rows[idx]] >= gpus:
            chosen.append(idx)
        i += 1
    for idx in chosen:
        snap.take(int(rows[idx]), gpus)
    # Skip candidates that can no longer fit this group; they never will again in this batch.
    while (
        group.pointer < len(group.order) and snap.gpus_free[rows[group.order[group.pointer]]] < gpus
    ):
        group.pointer += 1
    return chosen


# -- augmenting repair -----------------------------------------------------------------------------


def _repair(result: Assigned, snap: Snapshot) -> None:
    deadline = time.monotonic() + REPAIR_BUDGET_S
    on_row: dict[int, list[Hashable]] = {}
    for key, (group, idx) in result.placed.items():
        if group.req.replicas == 1:
            on_row.setdefault(int(group.scored.rows[idx[0]]), []).append(key)
    still_failed = []
    for group, key in result.failed:
        if (
            group.req.replicas != 1
            or time.monotonic() > deadline
            or not _augment(group, key, result, on_row, snap)
        ):
            still_failed.append((group, key))
    result.failed = still_failed


def _static_positions(group: Group) -> tuple[np.ndarray, dict[int, int]]:
    """Every row the group could ever use, and the index into ``scored`` of those that had room."""
    rows = group.feas.static_rows
    index = {int(r): i for i, r in enumerate(group.scored.rows)}
    return rows, index


def _augment(
    group: Group,
    key: Hashable,
    result: Assigned,
    on_row: dict[int, list[Hashable]],
    snap: Snapshot,
) -> bool:
    """Breadth-first search for a chain of moves that makes room for ``key``; apply it."""
    start = (group, key, -1)
    parent: dict[Hashable, tuple[Hashable, int]] = {}
    seen_jobs = {key}
    seen_rows: set[int] = set()
    queue: deque[tuple[Group, Hashable, int]] = deque([start])
    visits = 0
    while queue:
        g, job, current_row = queue.popleft()
        rows, _ = _static_positions(g)
        free = snap.gpus_free[rows]
        direct = np.flatnonzero((free >= g.req.gpus) & (rows != current_row))
        if len(direct):
            _apply(
                job,
                int(rows[direct[0]]),
                parent,
                result,
                on_row,
                snap,
                start_group=group,
                start_key=key,
            )
            return True
        for r in rows.tolist():
            visits += 1
            if r in seen_rows or r == current_row or visits > REPAIR_MAX_VISITS:
                continue
            seen_rows.add(r)
            room = int(snap.gpus_free[r])
            for other in on_row.get(r, ()):
                if other in seen_jobs:
                    continue
                og = result.placed[other][0]
                if room + og.req.gpus >= g.req.gpus:
                    seen_jobs.add(other)
                    parent[other] = (job, r)
                    queue.append((og, other, r))
    return False


def _apply(
    last: Hashable,
    free_row: int,
    parent: dict[Hashable, tuple[Hashable, int]],
    result: Assigned,
    on_row: dict[int, list[Hashable]],
    snap: Snapshot,
    *,
    start_group: Group,
    start_key: Hashable,
) -> None:
    """Shift every job on the path: the last into ``free_row``, each parent into the row freed."""
    job, target = last, free_row
    while True:
        group = start_group if job == start_key else result.placed[job][0]
        if job != start_key:
            old_row = int(group.scored.rows[result.placed[job][1][0]])
            snap.release(old_row, group.req.gpus)
            on_row[old_row].remove(job)
        snap.take(target, group.req.gpus)
        on_row.setdefault(target, []).append(job)
        result.placed[job] = (group, [_scored_index(group, target, snap)])
        if job == start_key:
            return
        job, target = parent[job]


def _scored_index(group: Group, row: int, snap: Snapshot) -> int:
    """The index of ``row`` in the group's scored candidates, scoring it first if it was full."""
    hits = np.flatnonzero(group.scored.rows == row)
    if len(hits):
        return int(hits[0])
    from scheduler.scoring import Scored, score

    position = int(np.flatnonzero(group.feas.static_rows == row)[0])
    extra = score(group.req, snap, group.feas, group.refs, np.array([position]))
    s = group.scored
    group.scored = Scored(
        np.append(s.positions, extra.positions),
        np.append(s.rows, extra.rows),
        np.append(s.total, extra.total),
        np.append(s.cost, extra.cost),
        np.append(s.latency, extra.latency),
        np.append(s.reliability, extra.reliability),
        None if s.rtt_ms is None or extra.rtt_ms is None else np.append(s.rtt_ms, extra.rtt_ms),
    )
    return len(group.scored.rows) - 1
