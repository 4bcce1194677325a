"""Feasibility: which nodes could take a job, and why the others cannot.

Each check owns one constraint and returns a boolean mask over the snapshot.
``evaluate`` runs them in order and, like Nomad's AllocMetric, records for each
constraint how many nodes it was the first to reject. Checks before
``CAPACITY_LABEL`` are static (the job will never fit on a node they reject);
the capacity check is "does not fit now, retry later".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from depin.spec import JobSpec
from scheduler.latency import FIBRE_KM_PER_MS, ROUTE_STRETCH, min_dot_for_distance, unit_vectors
from scheduler.offers import ACCELERATOR_CODES, MODEL_CODES, TIER_CODES, Snapshot

CAPACITY_LABEL = "free gpus"


@dataclass(frozen=True, slots=True)
class Request:
    """What a job needs, computed once per job and shared by every stage (PreFilter)."""

    spec: JobSpec
    gpus: int
    near_xyz: np.ndarray  # (k, 3) unit vectors of the users' locations

    @classmethod
    def of(cls, spec: JobSpec) -> Request:
        near = spec.placement.near
        xyz = unit_vectors([p.lat for p in near], [p.lon for p in near]).reshape(len(near), 3)
        return cls(spec=spec, gpus=spec.resources.gpus, near_xyz=xyz)


@dataclass(slots=True)
class Feasibility:
    """The outcome of the checks for one job over one snapshot."""

    static_ok: np.ndarray  # passes every static constraint
    fits_now: np.ndarray  # ... and has the free GPUs
    filtered: dict[str, int] = field(default_factory=dict)  # constraint -> nodes it rejected
    exhausted: int = 0  # nodes that pass every static check but lack free GPUs now


Check = tuple[str, Callable[[Request, Snapshot], np.ndarray]]


def static_checks(req: Request) -> list[Check]:
    """The static constraints that apply to ``req``, cheapest and most selective first."""
    spec = req.spec
    res, place, price = spec.resources, spec.placement, spec.pricing
    checks: list[Check] = []
    checks.append(
        (
            f"accelerator = {res.accelerator}",
            lambda r, s: s.accelerator == ACCELERATOR_CODES[res.accelerator],
        )
    )
    if res.gpu_models:
        codes = np.array([MODEL_CODES[m] for m in res.gpu_models], dtype=np.int16)
        checks.append(
            (f"gpu_model in {list(res.gpu_models)}", lambda r, s: np.isin(s.model, codes))
        )
    if res.vram_gib is not None:
        checks.append((f"vram_gib >= {res.vram_gib:g}", lambda r, s: s.vram_gib >= res.vram_gib))
    checks.append((f"gpus >= {req.gpus}", lambda r, s: s.gpus_total >= r.gpus))
    if place.tiers:
        tiers = np.array([TIER_CODES[t] for t in place.tiers], dtype=np.int8)
        checks.append((f"tier in {list(place.tiers)}", lambda r, s: np.isin(s.tier, tiers)))
    if place.regions:
        checks.append(
            (
                f"region in {list(place.regions)}",
                lambda r, s: np.isin(s.region, s.region_codes_matching(place.regions)),
            )
        )
    if price.max_usd_per_gpu_hour is not None:
        cap = float(price.max_usd_per_gpu_hour)
        checks.append((f"price <= {cap:g} USD/GPU-h", lambda r, s: s.price <= cap + 1e-12))
    if place.max_latency_ms is not None:
        checks.append((f"rtt <= {place.max_latency_ms:g} ms", within_latency_budget))
    return checks


def within_latency_budget(req: Request, snap: Snapshot) -> np.ndarray:
    """Nodes whose estimated RTT from every ``near`` point fits the budget.

    The budget minus the node's access RTT and bias becomes a maximum geodesic
    distance, and that a minimum dot product, so the test is a dot product per
    node and point; no trigonometry per pair.
    """
    budget = req.spec.placement.max_latency_ms
    assert budget is not None
    spare_ms = budget - snap.access_rtt_ms - snap.rtt_bias_ms
    min_dot = min_dot_for_distance(spare_ms * FIBRE_KM_PER_MS / (2 * ROUTE_STRETCH))
    dots = snap.xyz @ req.near_xyz.T  # (n, k)
    return np.all(dots >= min_dot[:, None], axis=1)


def evaluate(req: Request, snap: Snapshot) -> Feasibility:
    """Run every check over the snapshot, recording what each one rejected."""
    alive = np.ones(snap.size, dtype=bool)
    filtered: dict[str, int] = {}
    for label, check in static_checks(req):
        passed = check(req, snap)
        rejected = int(np.count_nonzero(alive & ~passed))
        if rejected:
            filtered[label] = rejected
        alive &= passed
    fits_now = alive & (snap.gpus_free >= req.gpus)
    return Feasibility(
        static_ok=alive,
        fits_now=fits_now,
        filtered=filtered,
        exhausted=int(np.count_nonzero(alive & ~fits_now)),
    )
