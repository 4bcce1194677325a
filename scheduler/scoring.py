"""Scoring: each scorer rates the feasible nodes 0-100; the objective weighs them.

Scores are ratios to the best candidate, so they read plainly: cost 50 means
twice the price of the cheapest feasible node, latency 50 twice the RTT of the
nearest. Reliability is the node's own record (0.99 -> 99).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.feasibility import Request
from scheduler.latency import distance_km_from_dot, rtt_ms_array
from scheduler.offers import Snapshot

SCORERS = ("cost", "latency", "reliability")


@dataclass(frozen=True, slots=True)
class Scores:
    """Per-scorer scores and the weighted total for a set of candidate rows."""

    rows: np.ndarray
    by_scorer: dict[str, np.ndarray]
    total: np.ndarray
    rtt_ms: np.ndarray | None  # worst RTT over the job's near points; None without them


def worst_rtt_ms(req: Request, snap: Snapshot, rows: np.ndarray) -> np.ndarray | None:
    """Estimated RTT from the farthest of the job's users to each node in ``rows``."""
    if len(req.near_xyz) == 0:
        return None
    min_dot = (snap.xyz[rows] @ req.near_xyz.T).min(axis=1)
    return rtt_ms_array(
        distance_km_from_dot(min_dot), snap.access_rtt_ms[rows], snap.rtt_bias_ms[rows]
    )


def score(req: Request, snap: Snapshot, rows: np.ndarray) -> Scores:
    """Score candidate ``rows`` for ``req`` under the job's objective weights."""
    w_cost, w_latency, w_reliability = req.spec.objective.normalized()
    price = snap.price[rows]
    cost = 100.0 * price.min() / np.maximum(price, 1e-12) if len(rows) else price
    rtt = worst_rtt_ms(req, snap, rows)
    latency = np.full(len(rows), 100.0) if rtt is None else 100.0 * rtt.min() / rtt
    reliability = 100.0 * snap.reliability[rows]
    total = w_cost * cost + w_latency * latency + w_reliability * reliability
    return Scores(
        rows=rows,
        by_scorer={"cost": cost, "latency": latency, "reliability": reliability},
        total=total,
        rtt_ms=rtt,
    )
