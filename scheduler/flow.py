"""Batch assignment, exact path: a min-cost flow (OR-Tools) per GPU size.

    source --(jobs x replicas)--> request class --(slots)--> node --(slots)--> sink

A slot is room for one replica of the class's GPU size. The solver first
maximizes the flow (placements), then minimizes cost, where an arc's cost is
how far the node's score falls short of a perfect one. With one GPU size in
the batch this is exact; with several, sizes are solved largest first on what
the larger ones left (a gang needs a whole node's worth, so it goes first).
Replicas must land on distinct nodes, all or none: a job whose flow cannot be
split over enough distinct nodes is left out afterwards.
"""

from __future__ import annotations

import numpy as np

from scheduler.assign import Assigned
from scheduler.batch import Batch, Group
from scheduler.offers import Snapshot

SCORE_CEILING = 102.0  # above any total (100 + the spread term)
COST_SCALE = 1000  # arc costs are integers: thousandths of a score point


def estimate_arcs(batch: Batch) -> int:
    """Arcs the flow would need: what ``mode="auto"`` weighs against its budget."""
    return sum(len(g.scored.rows) for g in batch.groups)


def assign_optimal(batch: Batch, snap: Snapshot) -> Assigned:
    from ortools.graph.python import min_cost_flow

    result = Assigned()
    for size in sorted({g.req.gpus for g in batch.groups}, reverse=True):
        groups = [g for g in batch.groups if g.req.gpus == size]
        flows = _solve(min_cost_flow, groups, snap, size)
        for group, per_candidate in zip(groups, flows, strict=True):
            _distribute(group, per_candidate, snap, result)
    return result


def _solve(mcf_module, groups: list[Group], snap: Snapshot, size: int) -> list[dict[int, int]]:  # type: ignore[no-untyped-def]
    """Solve one GPU size; returns, per group, flow per candidate index."""
    rows = (
        np.unique(np.concatenate([g.scored.rows for g in groups]))
        if groups
        else np.zeros(0, np.int64)
    )
    slots = snap.gpus_free[rows] // size
    source, sink = 0, 1 + len(groups) + len(rows)
    row_node = {int(r): 1 + len(groups) + i for i, r in enumerate(rows)}
    tails, heads, caps, costs = [], [], [], []
    candidate_arcs: list[tuple[int, int, int]] = []  # (group position, candidate index, arc index)
    for gi, g in enumerate(groups):
        tails.append(source), heads.append(1 + gi), caps.append(g.demand), costs.append(0)
        per_node_cap = len(
            g.keys
        )  # distinct nodes per replica set: at most one replica per job per node
        for ci, (row, total) in enumerate(
            zip(g.scored.rows.tolist(), g.scored.total.tolist(), strict=True)
        ):
            room = int(slots[np.searchsorted(rows, row)])
            if room == 0:
                continue
            cap = room if g.req.replicas == 1 else min(room, per_node_cap)
            candidate_arcs.append((gi, ci, len(tails)))
            tails.append(1 + gi), heads.append(row_node[row]), caps.append(cap)
            costs.append(round((SCORE_CEILING - total) * COST_SCALE))
    for r, node in row_node.items():
        (
            tails.append(node),
            heads.append(sink),
            caps.append(int(slots[np.searchsorted(rows, r)])),
            costs.append(0),
        )
    flows: list[dict[int, int]] = [{} for _ in groups]
    if not candidate_arcs:
        return flows
    solver = mcf_module.SimpleMinCostFlow()
    arcs = solver.add_arcs_with_capacity_and_unit_cost(
        np.array(tails), np.array(heads), np.array(caps), np.array(costs)
    )
    total_supply = sum(g.demand for g in groups)
    solver.set_nodes_supplies(np.array([source, sink]), np.array([total_supply, -total_supply]))
    status = solver.solve_max_flow_with_min_cost()
    if status != solver.OPTIMAL:
        raise RuntimeError(f"min-cost flow failed with status {status}")
    values = solver.flows(arcs)
    for gi, ci, ai in candidate_arcs:
        if values[ai]:
            flows[gi][ci] = int(values[ai])
    return flows


def _distribute(group: Group, flow: dict[int, int], snap: Snapshot, result: Assigned) -> None:
    """Hand the group's flow to its jobs in priority order, best candidates to the first."""
    remaining = dict(sorted(flow.items(), key=lambda kv: -group.scored.total[kv[0]]))
    gpus, need = group.req.gpus, group.req.replicas
    for key in group.keys:
        chosen = _take_distinct(remaining, need)
        if chosen is None:
            result.failed.append((group, key))
            continue
        for ci in chosen:
            snap.take(int(group.scored.rows[ci]), gpus)
        result.placed[key] = (group, chosen)


def _take_distinct(remaining: dict[int, int], need: int) -> list[int] | None:
    if need == 1:
        for ci, count in remaining.items():
            if count:
                remaining[ci] -= 1
                return [ci]
        return None
    # Replicas take the candidates with the most flow left, so later jobs keep distinct choices.
    ranked = sorted((ci for ci, count in remaining.items() if count), key=lambda ci: -remaining[ci])
    if len(ranked) < need:
        return None
    chosen = sorted(ranked[:need], key=list(remaining).index)
    for ci in chosen:
        remaining[ci] -= 1
    return chosen
