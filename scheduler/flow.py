"""Batch assignment, exact path: a min-cost flow (OR-Tools) over request classes and cells.

    source --(jobs x replicas)--> request class --(slots)--> cell --(slots)--> sink

A *slot* is room for one replica of the layer's GPU size on one node; a cell's
slots are the sum over its nodes. Aggregating nodes into cells (as Firmament
aggregates machines into equivalence classes) keeps the graph small — a
20k-job batch on 10k nodes is ~85k arcs, solved in about 0.1 s — while
losing nothing that distinguishes the nodes of a cell except reliability,
which the cell carries as the midpoint of its range. The solver first
maximizes the flow (placements), then minimizes cost: how far each cell's
score falls short of a perfect one (in one solve: leaving a job out costs
more than any chain of moves that would fit it). Inside a cell, the classes that weigh reliability
most get the most reliable nodes.

Exact for batches of one GPU size when nodes of a cell share reliability
(always true for a cost-only objective); several sizes are solved largest
first on what the larger ones left (a gang needs a whole node's room, so it
goes first). Replicas land on distinct nodes, all or none: a job whose flow
cannot be spread over enough distinct nodes is left out.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Hashable

import numpy as np

from scheduler.assign import Assigned, Pick
from scheduler.batch import Batch, Group
from scheduler.offers import Snapshot
from scheduler.scoring import SPREAD_POINTS, row_totals

SCORE_CEILING = 102.0  # above any total (100 + the spread term)
COST_SCALE = 1000  # arc costs are integers: thousandths of a score point


def estimate_arcs(batch: Batch) -> int:
    """Arcs the flow needs (feasible cells per class): what ``mode="auto"`` weighs."""
    return sum(len(g.feas.cells) for g in batch.groups)


def assign_optimal(batch: Batch, snap: Snapshot) -> Assigned:
    from ortools.graph.python import min_cost_flow

    result = Assigned()
    for size in sorted({g.req.gpus for g in batch.groups}, reverse=True):
        groups = [g for g in batch.groups if g.req.gpus == size]
        slots = snap.reduce_cells(np.add, snap.gpus_free // size)
        flows = _solve(min_cost_flow, groups, snap, slots)
        _distribute(groups, flows, snap, size, result)
    return result


def unplaced_cost(arc_costs: np.ndarray, classes: int) -> int:
    """The cost of leaving one job out: above any way of fitting it. Fitting it may move one
    job of every class along the way (an augmenting path crosses at most one class -> cell
    arc per class), so above ``classes`` x the dearest arc, not just above one placement."""
    return (classes + 1) * (int(arc_costs.max(initial=0)) + 1)


def _cell_totals(group: Group, snap: Snapshot, pos: np.ndarray) -> np.ndarray:
    """A cell's value for a class: cost and latency part plus its reliability midpoint, weighted."""
    cells = group.feas.cells[pos]
    reliability = (snap.cell_reliability_max[cells] + snap.cell_reliability_min[cells]) / 2
    return group.cs.part[pos] + group.req.weights[2] * reliability


def _solve(
    mcf, groups: list[Group], snap: Snapshot, slots: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:  # type: ignore[no-untyped-def]
    """Per class: the cells (positions into its feasible cells) that got flow, how much, and
    each one's value for the class."""
    n_groups, sink = len(groups), 1 + len(groups) + snap.cells
    tails = [np.zeros(n_groups, np.int64)]
    heads = [np.arange(1, n_groups + 1)]
    caps = [np.array([g.demand for g in groups], np.int64)]
    costs = [np.zeros(n_groups, np.int64)]
    spans = []
    offset = n_groups
    for gi, g in enumerate(groups):
        room = slots[g.feas.cells]
        pos = np.flatnonzero(room > 0)
        cap = (  # no arc carries more than its class needs (the solver converges sooner)
            np.minimum(room[pos], g.demand)
            if g.req.replicas == 1
            else np.minimum(room[pos], len(g.keys) * snap.cell_count[g.feas.cells[pos]])
        )
        tails.append(np.full(len(pos), 1 + gi))
        heads.append(1 + n_groups + g.feas.cells[pos])
        caps.append(cap)
        totals = _cell_totals(g, snap, pos)
        costs.append(np.round((SCORE_CEILING - totals) * COST_SCALE).astype(np.int64))
        spans.append((offset, pos, totals))
        offset += len(pos)
    tails.append(1 + n_groups + np.arange(snap.cells))
    heads.append(np.full(snap.cells, sink))
    caps.append(slots.astype(np.int64))
    costs.append(np.zeros(snap.cells, np.int64))
    arc_costs = np.concatenate(costs)
    solver = mcf.SimpleMinCostFlow()
    arcs = solver.add_arcs_with_capacity_and_unit_cost(
        np.concatenate(tails), np.concatenate(heads), np.concatenate(caps), arc_costs
    )
    supply = int(sum(g.demand for g in groups))
    # Demand no cell takes flows source -> sink, so one min-cost solve places as many as it
    # can first (cheaper than max flow, then min cost).
    solver.add_arc_with_capacity_and_unit_cost(0, sink, supply, unplaced_cost(arc_costs, n_groups))
    solver.set_nodes_supplies(np.array([0, sink]), np.array([supply, -supply]))
    status = solver.solve()
    if status != solver.OPTIMAL:
        raise RuntimeError(f"min-cost flow failed with status {status}")
    values = solver.flows(arcs)
    out = []
    for start, pos, totals in spans:
        f = values[start : start + len(pos)]
        used = f > 0
        out.append((pos[used], f[used].astype(np.int64), totals[used]))
    return out


class _CellNodes:
    """The nodes of each cell handed out one slot at a time: most reliable (and emptiest) first.

    A lazy max-heap per cell, keyed by the node's reliability plus the spread
    term (what tells a cell's nodes apart in scoring): a take pushes the node
    back under its new key and stale entries are dropped when they surface, so
    a take costs O(log n), not a scan of the cell.
    """

    def __init__(self, snap: Snapshot, size: int) -> None:
        self.snap, self.size = snap, size
        self.heaps: dict[int, list[tuple[float, float, int, int]]] = {}
        # Python copies of the columns a take reads (a numpy scalar costs ~10x a list item);
        # the snapshot learns what was taken at each ``flush``.
        self.free: list[int] = snap.gpus_free.tolist()
        self.reliability: list[float] = snap.reliability_score.tolist()
        self.total: list[int] = snap.gpus_total.tolist()
        self.taken: dict[int, int] = {}  # row -> GPUs taken since the last flush

    def _entry(self, row: int, free: int) -> tuple[float, float, int, int]:
        rel = self.reliability[row]
        key = rel + SPREAD_POINTS * free / max(self.total[row], 1)
        return (-key, -rel, row, free)  # ties: most reliable, then lowest row

    def _heap(self, cell: int) -> list[tuple[float, float, int, int]]:
        heap = self.heaps.get(cell)
        if heap is None:
            start, count = int(self.snap.cell_start[cell]), int(self.snap.cell_count[cell])
            free = self.free[start : start + count]
            heap = [self._entry(start + i, f) for i, f in enumerate(free) if f >= self.size]
            heapq.heapify(heap)
            self.heaps[cell] = heap
        return heap

    def take(self, cell: int, exclude: Collection[int]) -> int | None:
        heap, free = self._heap(cell), self.free
        skipped = []
        best = None
        while heap:
            entry = heap[0]
            row, seen = entry[2], entry[3]
            if free[row] != seen:
                heapq.heappop(heap)  # stale: the node's free GPUs changed since the push
            elif row in exclude:
                skipped.append(heapq.heappop(heap))
            else:
                best = row
                heapq.heappop(heap)
                break
        for entry in skipped:
            heapq.heappush(heap, entry)
        if best is not None:
            free[best] -= self.size
            self.taken[best] = self.taken.get(best, 0) + self.size
            self._push(cell, best)
        return best

    def give_back(self, cell: int, row: int) -> None:
        """Release a slot taken from ``cell`` since the last flush (replicas are all or none)."""
        self.free[row] += self.size
        self.taken[row] -= self.size
        self._push(cell, row)

    def flush(self) -> None:
        """Book what was taken in the snapshot (once per layer: a numpy pass per take or
        per class costs more than the takes)."""
        if self.taken:
            rows = np.fromiter(self.taken.keys(), np.int64, len(self.taken))
            gpus = np.fromiter(self.taken.values(), np.int32, len(self.taken))
            self.snap.take_many(rows, gpus)
            self.taken.clear()

    def _push(self, cell: int, row: int) -> None:
        now = self.free[row]
        if now >= self.size:
            heapq.heappush(self._heap(cell), self._entry(row, now))


def _distribute(
    groups: list[Group],
    flows: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    snap: Snapshot,
    size: int,
    result: Assigned,
) -> None:
    """Turn per-cell flow into nodes: classes weighing reliability most choose first."""
    nodes = _CellNodes(snap, size)
    order = sorted(
        range(len(groups)), key=lambda i: (-groups[i].req.weights[2], groups[i].first_index)
    )
    for gi in order:
        group = groups[gi]
        pos, count, totals = flows[gi]
        best_first = np.argsort(-totals, kind="stable")
        remaining = [[int(pos[i]), int(count[i])] for i in best_first]
        if group.req.replicas == 1:
            rows, positions = _take_singles(group, remaining, nodes)
            keys = group.keys[: len(rows)]
            result.failed.extend((group, key) for key in group.keys[len(rows) :])
        else:
            keys, rows, positions = [], [], []
            for key in group.keys:
                chosen_rows, chosen_pos = _take_replicas(group, remaining, nodes)
                if chosen_rows is None:
                    result.failed.append((group, key))
                else:
                    keys.append(key)
                    rows += chosen_rows
                    positions += chosen_pos
        _record(group, keys, rows, positions, nodes, result)
    nodes.flush()


def _take_singles(
    group: Group, remaining: list[list[int]], nodes: _CellNodes
) -> tuple[list[int], list[int]]:
    """Single-replica jobs, in order, each take the next slot of the best cell with room;
    the rows they got and each one's cell position."""
    need = len(group.keys)
    rows: list[int] = []
    positions: list[int] = []
    for position, slots in remaining:
        cell = int(group.feas.cells[position])
        for _ in range(min(slots, need - len(rows))):
            row = nodes.take(cell, ())
            if row is None:
                break  # the cell ran out for this size: the next jobs try the next cell
            rows.append(row)
            positions.append(position)
        if len(rows) == need:
            break
    return rows, positions


def _take_replicas(
    group: Group, remaining: list[list[int]], nodes: _CellNodes
) -> tuple[list[int] | None, list[int]]:
    """One job's replicas on distinct nodes from the cells its class got; all or none."""
    while remaining and remaining[0][1] == 0:
        remaining.pop(0)  # drained cells never refill within a job's turn
    rows: list[int] = []
    positions: list[int] = []
    progress = True
    while len(rows) < group.req.replicas and progress:
        progress = False
        for entry in remaining:
            if len(rows) == group.req.replicas:
                break
            if entry[1] == 0:
                continue
            row = nodes.take(int(group.feas.cells[entry[0]]), set(rows))
            if row is not None:
                entry[1] -= 1
                rows.append(row)
                positions.append(entry[0])
                progress = True
    if len(rows) < group.req.replicas:
        for row, pos in zip(rows, positions, strict=True):  # replicas are all or none
            nodes.give_back(int(group.feas.cells[pos]), row)
        for pos in positions:
            next(e for e in remaining if e[0] == pos)[1] += 1
        return None, []
    return rows, positions


def _record(
    group: Group,
    keys: list[Hashable],
    rows: list[int],
    positions: list[int],
    nodes: _CellNodes,
    result: Assigned,
) -> None:
    """Score the group's placements in one vectorized pass, on the nodes as they are now;
    each key's replicas are consecutive in ``rows``."""
    if not keys:
        return
    pos = np.array(positions, dtype=np.int64)
    free = np.array([nodes.free[r] for r in rows])
    rows_array = np.array(rows, dtype=np.int64)
    totals = row_totals(group.req, nodes.snap, group.cs, rows_array, pos, free).tolist()
    rtts = [None] * len(rows) if group.cs.rtt_ms is None else group.cs.rtt_ms[pos].tolist()
    placed, n = result.placed, group.req.replicas
    if n == 1:
        for key, row, total, rtt in zip(keys, rows, totals, rtts, strict=True):
            placed[key] = (group, Pick([row], [total], [rtt]))
        return
    for i, key in enumerate(keys):
        span = slice(i * n, i * n + n)
        placed[key] = (group, Pick(rows[span], totals[span], rtts[span]))
