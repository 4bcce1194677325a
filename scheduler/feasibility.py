"""Feasibility: which nodes could take a request, and why the others cannot.

Each check owns one constraint. Class checks run once per node class; the
latency check once per location, as a dot product against a per-network
threshold; their conjunction marks the feasible *cells*. Like Nomad's
AllocMetric, each check records how many nodes it was the first to reject.
All checks are static (a node they reject will never take the job); free
capacity is looked at later: "does not fit now, retry later".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from depin.spec import JobSpec
from scheduler.latency import KM_PER_SPARE_MS, min_dot_for_distance
from scheduler.offers import ACCESS_RTT_BY_CODE, Snapshot
from scheduler.request import Request


@dataclass(frozen=True, slots=True)
class Check:
    """One constraint: a name for suggestions, a label for people, a test over classes."""

    name: str
    label: str
    test: Callable[[Request, Snapshot], np.ndarray]


_LABELS: dict[str, Callable[[JobSpec], str]] = {
    "accelerator": lambda s: f"accelerator = {s.resources.accelerator}",
    "gpu_model": lambda s: f"gpu_model in {list(s.resources.gpu_models)}",
    "vram_gib": lambda s: f"vram_gib >= {s.resources.vram_gib:g}",
    "gpus": lambda s: f"gpus >= {s.resources.gpus}",
    "tier": lambda s: f"tier in {list(s.placement.tiers)}",
    "region": lambda s: f"region in {list(s.placement.regions)}",
    "price": lambda s: f"price <= {float(s.pricing.max_usd_per_gpu_hour or 0):g} USD/GPU-h",
    "latency": lambda s: f"rtt <= {s.placement.max_latency_ms:g} ms",
}


def check_label(name: str, spec: JobSpec) -> str:
    """How people read check ``name`` of ``spec`` ("vram_gib >= 24")."""
    return _LABELS[name](spec)


def check_labels(spec: JobSpec) -> dict[str, str]:
    """Each constraint the job sets, by check name: its label for people (latency last)."""
    res, place = spec.resources, spec.placement
    names = ["accelerator"]
    names += ["gpu_model"] if res.gpu_models else []
    names += ["vram_gib"] if res.vram_gib is not None else []
    names += ["gpus"]
    names += ["tier"] if place.tiers else []
    names += ["region"] if place.regions else []
    names += ["price"] if spec.pricing.max_usd_per_gpu_hour is not None else []
    names += ["latency"] if place.max_latency_ms is not None else []
    return {name: _LABELS[name](spec) for name in names}


_CLASS_TESTS: dict[str, Callable[[Request, Snapshot], np.ndarray]] = {
    "accelerator": lambda r, s: s.class_accelerator == r.accelerator,
    "gpu_model": lambda r, s: r.models[s.class_model],
    "vram_gib": lambda r, s: s.class_vram_gib >= r.vram_gib,
    "gpus": lambda r, s: s.class_gpus_total >= r.gpus,
    "tier": lambda r, s: r.tiers[s.class_tier],
    "region": lambda r, s: s.region_table(r.regions)[s.class_region],
    "price": lambda r, s: s.class_price <= r.price_cap + 1e-12,
}


def class_checks(req: Request) -> list[Check]:
    """The static constraints of ``req`` that depend only on a node's class."""
    return [
        Check(name, label, _CLASS_TESTS[name])
        for name, label in check_labels(req.spec).items()
        if name != "latency"
    ]


def latency_label(req: Request) -> str:
    return check_labels(req.spec)["latency"]


_THRESHOLD_BUDGETS_KEPT = 1024  # distinct budgets a snapshot remembers thresholds for


def location_thresholds(req: Request, snap: Snapshot) -> np.ndarray:
    """Per location: the least dot product with a user's place that keeps the RTT in budget
    (read-only; computed once per budget and snapshot).

    The budget minus the access network's RTT becomes a maximum distance per
    network type (four thresholds in all); only locations with a measured RTT
    bias get a threshold of their own.
    """
    budget = req.max_latency_ms
    assert budget is not None
    known = snap.thresholds_by_budget
    thresholds = known.get(budget)
    if thresholds is not None:
        return thresholds
    by_network = min_dot_for_distance((budget - ACCESS_RTT_BY_CODE) * KM_PER_SPARE_MS)
    thresholds = by_network[snap.location_network]
    biased = snap.biased_locations
    if len(biased):
        spare = budget - snap.location_access_rtt_ms[biased] - snap.location_rtt_bias_ms[biased]
        thresholds[biased] = min_dot_for_distance(spare * KM_PER_SPARE_MS)
    thresholds.flags.writeable = False
    if len(known) >= _THRESHOLD_BUDGETS_KEPT:
        known.clear()
    known[budget] = thresholds
    return thresholds


def location_min_dot(req: Request, snap: Snapshot) -> np.ndarray:
    """Per location: the dot product with the farthest of the request's users."""
    if len(req.near_xyz) == 1:
        return snap.location_xyz @ req.near_xyz[0]
    return (snap.location_xyz @ req.near_xyz.T).min(axis=1)


@dataclass(slots=True)
class Feasibility:
    """The outcome of the static checks for one request over one snapshot."""

    cells: np.ndarray  # cells that pass every static check
    location_dot: np.ndarray | None  # per location: dot with the farthest user; None without users
    filtered: dict[str, int] = field(default_factory=dict)  # label -> nodes it rejected first
    nodes_evaluated: int = 0
    feasible: int = 0  # nodes in the feasible cells
    _rows: np.ndarray | None = None

    def static_rows(self, snap: Snapshot) -> np.ndarray:
        """Every node row that passes the static checks (expanded once, on demand)."""
        if self._rows is None:
            self._rows = snap.cell_rows(self.cells)
        return self._rows

    def exhausted(self, snap: Snapshot, gpus: int) -> int:
        """Feasible nodes that are up but busy: without ``gpus`` free right now."""
        rows = self.static_rows(snap)
        return int(np.count_nonzero(snap.available[rows] & (snap.gpus_free[rows] < gpus)))

    def offline(self, snap: Snapshot) -> int:
        """Feasible nodes that are not available (offline, draining): a job may wait for them."""
        return int(np.count_nonzero(~snap.available[self.static_rows(snap)]))


ClassVerdict = tuple[np.ndarray, dict[str, int]]


def class_verdict(req: Request, snap: Snapshot) -> ClassVerdict:
    """Which classes pass every class check, and how many nodes each check rejected first."""
    class_ok = np.ones(snap.classes, dtype=bool)
    filtered: dict[str, int] = {}
    for check in class_checks(req):
        passed = check.test(req, snap)
        rejected = int(snap.class_count[class_ok & ~passed].sum())
        if rejected:
            filtered[check.label] = rejected
        class_ok &= passed
    return class_ok, filtered


def class_signature(req: Request) -> tuple[object, ...]:
    """What the class checks depend on: requests equal in it share one verdict."""
    spec = req.spec
    return (spec.resources, spec.placement.tiers, spec.placement.regions, req.price_cap)


def evaluate(
    req: Request, snap: Snapshot, verdicts: dict[tuple[object, ...], ClassVerdict] | None = None
) -> Feasibility:
    """Run every static check, recording what each one rejected.

    ``verdicts`` caches class verdicts across the requests of one batch: jobs
    from one template near different cities differ only in the latency check.
    """
    if verdicts is None:
        class_ok, filtered = class_verdict(req, snap)
    else:
        signature = class_signature(req)
        if signature not in verdicts:
            verdicts[signature] = class_verdict(req, snap)
        class_ok, filtered = verdicts[signature]
    filtered = dict(filtered)
    cell_ok = class_ok[snap.cell_class]
    location_dot = None
    if req.has_near:
        location_dot = location_min_dot(req, snap)
        if req.max_latency_ms is not None:
            in_reach = (location_dot >= location_thresholds(req, snap))[snap.cell_location]
            rejected = int(snap.cell_count[cell_ok & ~in_reach].sum())
            if rejected:
                filtered[latency_label(req)] = rejected
            cell_ok &= in_reach
    cells = np.flatnonzero(cell_ok)
    feasible = int(snap.cell_count[cells].sum())
    return Feasibility(cells, location_dot, filtered, snap.size, feasible)
