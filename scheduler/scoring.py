"""Scoring: each scorer rates feasible nodes 0-100; the objective's weights combine them.

Scores are ratios to the best node the request could ever use (its static
candidates), so they read plainly and do not drift with load: cost 50 means
twice the price of the cheapest feasible node, latency 50 twice the RTT of the
nearest. Reliability is the node's own record (0.99 -> 99). A small spread
term (at most ``SPREAD_POINTS``) favours emptier nodes, so equal nodes share
load instead of one filling up first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.feasibility import Feasibility
from scheduler.latency import distance_km_from_dot, rtt_ms_array
from scheduler.offers import Snapshot
from scheduler.request import Request

SCORERS = ("cost", "latency", "reliability")
SPREAD_POINTS = 1.0


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores of candidate positions (into ``Feasibility.static_rows``)."""

    positions: np.ndarray
    rows: np.ndarray
    total: np.ndarray
    cost: np.ndarray
    latency: np.ndarray
    reliability: np.ndarray
    rtt_ms: np.ndarray | None

    def by_scorer(self, i: int) -> dict[str, float]:
        return {
            "cost": float(self.cost[i]),
            "latency": float(self.latency[i]),
            "reliability": float(self.reliability[i]),
        }


def static_rtt_ms(snap: Snapshot, feas: Feasibility) -> np.ndarray | None:
    """Estimated RTT from the farthest user to each static candidate; None without users."""
    if feas.min_dot is None:
        return None
    rows = feas.static_rows
    return rtt_ms_array(
        distance_km_from_dot(feas.min_dot), snap.access_rtt_ms[rows], snap.rtt_bias_ms[rows]
    )


@dataclass(frozen=True, slots=True)
class References:
    """The best price and RTT among a request's static candidates: the 100-point marks."""

    price: float
    rtt_ms: float | None
    all_rtt_ms: np.ndarray | None  # per static row

    @classmethod
    def of(cls, snap: Snapshot, feas: Feasibility) -> References:
        rtt = static_rtt_ms(snap, feas)
        rows = feas.static_rows
        best_price = float(snap.price[rows].min()) if len(rows) else 1.0
        best_rtt = float(rtt.min()) if rtt is not None and len(rtt) else None
        return cls(best_price, best_rtt, rtt)


def score(
    req: Request, snap: Snapshot, feas: Feasibility, refs: References, positions: np.ndarray
) -> Scored:
    """Score the static candidates at ``positions`` under the request's objective."""
    w_cost, w_latency, w_reliability = req.weights
    rows = feas.static_rows[positions]
    cost = 100.0 * refs.price * snap.inv_price[rows]
    if refs.all_rtt_ms is None or refs.rtt_ms is None:
        rtt, latency = None, np.full(len(rows), 100.0)
    else:
        rtt = refs.all_rtt_ms[positions]
        latency = 100.0 * refs.rtt_ms / rtt
    reliability = snap.reliability_score[rows]
    spread = SPREAD_POINTS * snap.gpus_free[rows] / np.maximum(snap.gpus_total[rows], 1)
    total = w_cost * cost + w_latency * latency + w_reliability * reliability + spread
    return Scored(positions, rows, total, cost, latency, reliability, rtt)


def best_first(snap: Snapshot, scored: Scored) -> np.ndarray:
    """Indices into ``scored`` ordered best first: total, then cheaper, then lower node id."""
    rows = scored.rows
    return np.lexsort((snap.node_id[rows], snap.price[rows], -scored.total))


def top(snap: Snapshot, scored: Scored, k: int) -> np.ndarray:
    """The ``k`` best indices into ``scored``, best first, without sorting them all."""
    n = len(scored.rows)
    if n <= k:
        return best_first(snap, scored)
    part = np.argpartition(-scored.total, k - 1)[:k]
    # Ties at the k-th total may straddle the cut; widen to every row that ties it.
    kth = scored.total[part].min()
    part = np.flatnonzero(scored.total >= kth)
    sub = Scored(
        scored.positions[part],
        scored.rows[part],
        scored.total[part],
        scored.cost[part],
        scored.latency[part],
        scored.reliability[part],
        None if scored.rtt_ms is None else scored.rtt_ms[part],
    )
    return part[best_first(snap, sub)][:k]
