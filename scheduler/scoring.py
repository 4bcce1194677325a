"""Scoring: each scorer rates feasible nodes 0-100; the objective's weights combine them.

Every score is linear in what it measures, against a fixed reference:

- cost: 100 x (1 - price / the dearest price in the market): 100 is free, 0 the
  dearest node. Linear and shared by all jobs, so a batch that maximizes the
  sum of cost scores minimizes the total price, which is what the exact
  solver is checked against;
- latency: 100 x (1 - RTT / the job's budget) (or ``LATENCY_REF_MS`` without
  one, floored at 0): 100 is next door, 0 the edge of the budget;
- reliability: the node's own record (0.99 -> 99).

A small spread term (at most ``SPREAD_POINTS``) favours emptier nodes, so
equal nodes share load instead of one filling up first.

Cost and latency are the same for every node of a cell, so they are computed
per cell; a cell's bounds (its best and worst reliability, an empty or full
node) let ``best_rows`` score only the cells that can hold a top candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scheduler.feasibility import Feasibility
from scheduler.latency import distance_km_from_dot, rtt_ms_array
from scheduler.offers import Snapshot
from scheduler.request import Request

SPREAD_POINTS = 0.1
# Latency reference for jobs with users but no budget: round trips past it score 0.
LATENCY_REF_MS = 250.0


@dataclass(frozen=True, slots=True)
class CellScores:
    """Per feasible cell (aligned with ``Feasibility.cells``): the cell-level part of the score."""

    cost: np.ndarray
    latency: np.ndarray
    rtt_ms: np.ndarray | None
    part: np.ndarray  # weighted cost + latency
    upper: np.ndarray  # the best total any node of the cell can have
    lower: np.ndarray  # the worst total a node of the cell with room can have

    @classmethod
    def of(cls, req: Request, snap: Snapshot, feas: Feasibility) -> CellScores:
        cells = feas.cells
        rtt, latency = None, np.full(len(cells), 100.0)
        if feas.location_dot is not None:  # an empty array when no cell passes
            rtt = _cell_rtt(snap, cells, feas.location_dot[snap.cell_location[cells]])
            latency = _latency_score(rtt, req.max_latency_ms or LATENCY_REF_MS)
        return cls(*_weighted(snap, cells, latency, *req.weights, rtt))

    @classmethod
    def of_many(
        cls, reqs: Sequence[Request], snap: Snapshot, feasibilities: Sequence[Feasibility]
    ) -> list[CellScores]:
        """``of`` for many requests (a batch's classes) in one vectorized pass over their
        feasible cells laid end to end: per-class numpy calls cost more than the arithmetic."""
        if len(reqs) <= 1:  # a single decision: no concatenating and splitting
            return [cls.of(req, snap, feas) for req, feas in zip(reqs, feasibilities, strict=True)]
        sizes = [len(f.cells) for f in feasibilities]
        cells = np.concatenate([f.cells for f in feasibilities])
        near = [f.location_dot is not None for f in feasibilities]
        dots = [
            f.location_dot[snap.cell_location[f.cells]] if has else np.ones(len(f.cells))
            for f, has in zip(feasibilities, near, strict=True)
        ]
        rtt = _cell_rtt(snap, cells, np.concatenate(dots))
        reference = np.repeat([r.max_latency_ms or LATENCY_REF_MS for r in reqs], sizes)
        latency = np.where(np.repeat(near, sizes), _latency_score(rtt, reference), 100.0)
        weights = np.repeat(np.array([r.weights for r in reqs], dtype=np.float64), sizes, axis=0)
        columns = _weighted(snap, cells, latency, *weights.T, rtt)
        bounds = np.cumsum(sizes)[:-1]
        split = [np.split(c, bounds) for c in columns]  # type: ignore[arg-type]
        return [
            cls(c, lat, r if has else None, p, u, lo)
            for c, lat, r, p, u, lo, has in zip(*split, near, strict=True)
        ]


def _cell_rtt(snap: Snapshot, cells: np.ndarray, dots: np.ndarray) -> np.ndarray:
    """RTT to each cell from the user its dot product (with the cell's location) is of."""
    locations = snap.cell_location[cells]
    return rtt_ms_array(
        distance_km_from_dot(dots),
        snap.location_access_rtt_ms[locations],
        snap.location_rtt_bias_ms[locations],
    )


def _latency_score(rtt: np.ndarray, reference: float | np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 100.0 * (1.0 - rtt / reference))


def _weighted(
    snap: Snapshot,
    cells: np.ndarray,
    latency: np.ndarray,
    w_cost: float | np.ndarray,
    w_latency: float | np.ndarray,
    w_reliability: float | np.ndarray,
    rtt: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray, np.ndarray, np.ndarray]:
    """CellScores' columns, given the cells' latency scores and the objective's weights."""
    cost = 100.0 * (1.0 - snap.cell_price[cells] / snap.price_ref)
    part = w_cost * cost + w_latency * latency
    upper = part + w_reliability * snap.cell_reliability_max[cells] + SPREAD_POINTS
    lower = part + w_reliability * snap.cell_reliability_min[cells]
    return cost, latency, rtt, part, upper, lower


@dataclass(frozen=True, slots=True)
class Ranked:
    """Candidate rows best first, with their totals and the cell (position) each belongs to."""

    rows: np.ndarray
    total: np.ndarray
    cell_pos: np.ndarray  # index into Feasibility.cells / CellScores arrays
    complete: bool  # every feasible row with room is here (else only a top prefix)

    def rtt_ms(self, cs: CellScores, i: int) -> float | None:
        return None if cs.rtt_ms is None else float(cs.rtt_ms[self.cell_pos[i]])


def row_totals(
    req: Request,
    snap: Snapshot,
    cs: CellScores,
    rows: np.ndarray,
    cell_pos: np.ndarray,
    free: np.ndarray | None = None,
) -> np.ndarray:
    """Exact totals of ``rows`` (cell part + reliability + spread), with the rows' free GPUs
    as the snapshot has them or as given (``free``)."""
    w_reliability = req.weights[2]
    free = snap.gpus_free[rows] if free is None else free
    spread = SPREAD_POINTS * free / np.maximum(snap.gpus_total[rows], 1)
    return cs.part[cell_pos] + w_reliability * snap.reliability_score[rows] + spread


def best_rows(
    req: Request, snap: Snapshot, feas: Feasibility, cs: CellScores, k: int | None
) -> Ranked:
    """At least the ``k`` best rows with room (None: all), exactly ordered: total, then
    cheaper, then node id.

    Cells are ranked by their lower bound; the k-th best lower bound is a
    threshold no top-k row falls below, so only cells whose upper bound
    reaches it are expanded, and only rows at or above it are returned.
    """
    gpus = req.gpus
    open_pos = np.flatnonzero(snap.cell_free_max[feas.cells] >= gpus)
    if k is not None and len(open_pos) > k:
        lower = cs.lower[open_pos]
        threshold = float(-np.partition(-lower, k - 1)[k - 1])
        expand = open_pos[cs.upper[open_pos] >= threshold]
    else:
        threshold, expand = -np.inf, open_pos
    cells = feas.cells[expand]
    rows = snap.cell_rows(cells)
    cell_pos = np.repeat(expand, snap.cell_count[cells])
    room = snap.gpus_free[rows] >= gpus
    rows, cell_pos = rows[room], cell_pos[room]
    total = row_totals(req, snap, cs, rows, cell_pos)
    keep = total >= threshold
    rows, cell_pos, total = rows[keep], cell_pos[keep], total[keep]
    order = np.lexsort((snap.node_id[rows], snap.price[rows], -total))
    return Ranked(rows[order], total[order], cell_pos[order], complete=threshold == -np.inf)
