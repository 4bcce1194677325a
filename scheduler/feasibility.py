"""Feasibility: which nodes could take a request, and why the others cannot.

Each check owns one constraint. Class checks run once per node class; the
latency check runs per node, but only on nodes the class checks kept, and as
a dot product against a per-network threshold. Like Nomad's AllocMetric, each
check records how many nodes it was the first to reject. All checks are
static (a node they reject will never take the job); free capacity is looked
at last: "does not fit now, retry later".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from scheduler.latency import FIBRE_KM_PER_MS, ROUTE_STRETCH, min_dot_for_distance
from scheduler.offers import ACCESS_RTT_BY_CODE, Snapshot
from scheduler.request import Request

# Below this many passing classes, gather their rows class by class instead of masking all nodes.
_FEW_CLASSES = 64
_KM_PER_SPARE_MS = FIBRE_KM_PER_MS / (2 * ROUTE_STRETCH)


@dataclass(frozen=True, slots=True)
class Check:
    """One constraint: a label for people, a name for suggestions, a test over classes."""

    name: str
    label: str
    test: Callable[[Request, Snapshot], np.ndarray]


def class_checks(req: Request) -> list[Check]:
    """The static constraints of ``req`` that depend only on a node's class."""
    checks = [
        Check(
            "accelerator",
            f"accelerator = {req.spec.resources.accelerator}",
            lambda r, s: s.class_accelerator == r.accelerator,
        )
    ]
    if req.models is not None:
        names = list(req.spec.resources.gpu_models)
        checks.append(
            Check(
                "gpu_model", f"gpu_model in {names}", lambda r, s: np.isin(s.class_model, r.models)
            )
        )
    if req.vram_gib is not None:
        checks.append(
            Check(
                "vram_gib",
                f"vram_gib >= {req.vram_gib:g}",
                lambda r, s: s.class_vram_gib >= r.vram_gib,
            )
        )
    checks.append(Check("gpus", f"gpus >= {req.gpus}", lambda r, s: s.class_gpus_total >= r.gpus))
    if req.tiers is not None:
        tiers = list(req.spec.placement.tiers)
        checks.append(
            Check("tier", f"tier in {tiers}", lambda r, s: np.isin(s.class_tier, r.tiers))
        )
    if req.regions:
        checks.append(
            Check(
                "region",
                f"region in {list(req.regions)}",
                lambda r, s: np.isin(s.class_region, s.region_codes_matching(r.regions)),
            )
        )
    if req.price_cap is not None:
        checks.append(
            Check(
                "price",
                f"price <= {req.price_cap:g} USD/GPU-h",
                lambda r, s: s.class_price <= r.price_cap + 1e-12,
            )
        )
    return checks


def latency_label(req: Request) -> str:
    return f"rtt <= {req.max_latency_ms:g} ms"


@dataclass(slots=True)
class Feasibility:
    """The outcome of the checks for one request over one snapshot."""

    static_rows: np.ndarray  # rows that pass every static check
    min_dot: (
        np.ndarray | None
    )  # per static row: dot product with the farthest user; None without near
    filtered: dict[str, int] = field(default_factory=dict)  # label -> nodes it rejected first
    nodes_evaluated: int = 0

    def fits_now(self, snap: Snapshot, gpus: int) -> np.ndarray:
        """Positions (into ``static_rows``) of nodes with ``gpus`` free right now."""
        return np.flatnonzero(snap.gpus_free[self.static_rows] >= gpus)

    def exhausted(self, snap: Snapshot, gpus: int) -> int:
        return int(np.count_nonzero(snap.gpus_free[self.static_rows] < gpus))


def rows_of_classes(snap: Snapshot, class_ok: np.ndarray) -> np.ndarray:
    """The node rows of every class where ``class_ok`` is true."""
    ok = np.flatnonzero(class_ok)
    if len(ok) == 0:
        return np.zeros(0, dtype=np.int64)
    if len(ok) <= _FEW_CLASSES:
        return np.concatenate([snap.class_rows(c) for c in ok])
    return np.flatnonzero(class_ok[snap.node_class])


def latency_thresholds(req: Request, snap: Snapshot, rows: np.ndarray) -> np.ndarray:
    """Per row: the least dot product with a user's location that keeps the RTT in budget.

    The budget minus the access network's RTT becomes a maximum distance per
    network type (four thresholds in all); only nodes with a measured RTT bias
    get a threshold of their own.
    """
    budget = req.max_latency_ms
    assert budget is not None
    by_network = min_dot_for_distance((budget - ACCESS_RTT_BY_CODE) * _KM_PER_SPARE_MS)
    thresholds = by_network[snap.network[rows]]
    if len(snap.biased_rows):
        biased = np.flatnonzero(snap.rtt_bias_ms[rows] != 0.0)
        if len(biased):
            b_rows = rows[biased]
            spare = budget - snap.access_rtt_ms[b_rows] - snap.rtt_bias_ms[b_rows]
            thresholds[biased] = min_dot_for_distance(spare * _KM_PER_SPARE_MS)
    return thresholds


def evaluate(req: Request, snap: Snapshot) -> Feasibility:
    """Run every static check, recording what each one rejected."""
    class_ok = np.ones(snap.classes, dtype=bool)
    filtered: dict[str, int] = {}
    for check in class_checks(req):
        passed = check.test(req, snap)
        rejected = int(snap.class_count[class_ok & ~passed].sum())
        if rejected:
            filtered[check.label] = rejected
        class_ok &= passed
    rows = rows_of_classes(snap, class_ok)
    min_dot = None
    if req.has_near and len(rows):
        min_dot = (snap.xyz[rows] @ req.near_xyz.T).min(axis=1)
        if req.max_latency_ms is not None:
            ok = min_dot >= latency_thresholds(req, snap, rows)
            rejected = len(rows) - int(np.count_nonzero(ok))
            if rejected:
                filtered[latency_label(req)] = rejected
            rows, min_dot = rows[ok], min_dot[ok]
    elif req.has_near:
        min_dot = np.zeros(0)
    return Feasibility(
        static_rows=rows, min_dot=min_dot, filtered=filtered, nodes_evaluated=snap.size
    )
