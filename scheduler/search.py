"""Market search: free capacity that meets a request, ranked like ``vastai search offers``.

The request is a JobSpec (what the search flags describe), so search and
scheduling share one notion of feasibility and one score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scheduler.feasibility import evaluate
from scheduler.offers import Offer, Snapshot
from scheduler.request import Request
from scheduler.scoring import CellScores, best_rows

SORT_KEYS = ("price", "latency", "score")
MAX_RESULTS = 1000


@dataclass(frozen=True, slots=True)
class Hit:
    """One node with room for the request, and how it ranks."""

    offer: Offer
    gpus_free: int
    rtt_ms: float | None
    score: float


def search(req: Request, snap: Snapshot, *, sort: str = "price", limit: int = 20) -> list[Hit]:
    """Nodes with room for ``req`` now, best first by ``sort`` (ties: score, then node id)."""
    if sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {SORT_KEYS}")
    if sort == "latency" and not req.has_near:
        raise ValueError("sorting by latency needs a place to measure from (near)")
    limit = max(1, min(limit, MAX_RESULTS))
    feas = evaluate(req, snap)
    cs = CellScores.of(req, snap, feas)
    ranked = best_rows(req, snap, feas, cs, None)  # every row with room
    rows, total = ranked.rows, ranked.total
    rtt = None if cs.rtt_ms is None else cs.rtt_ms[ranked.cell_pos]
    if sort == "price":
        order = np.lexsort((snap.node_id[rows], -total, snap.price[rows]))
    elif sort == "latency":
        assert rtt is not None
        order = np.lexsort((snap.node_id[rows], -total, rtt))
    else:
        order = np.arange(len(rows))  # ranked is already best score first
    return [
        Hit(
            offer=snap.offers[int(rows[i])],
            gpus_free=int(snap.gpus_free[rows[i]]),
            rtt_ms=None if rtt is None else float(rtt[i]),
            score=float(total[i]),
        )
        for i in order[:limit]
    ]
