"""What a job needs, computed once (Kubernetes' PreFilter) and shared by every stage.

Jobs whose placement-relevant fields are identical form a *request class*:
feasibility and scores are computed once per class, however many jobs (or
replicas) it holds. Name, command, duration and budget do not affect where a
job may go, so they are not part of the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from depin.spec import JobSpec
from scheduler.latency import unit_vectors
from scheduler.offers import ACCELERATOR_CODES, MODEL_CODES, TIER_CODES

RequestKey = tuple[object, ...]


def request_key(spec: JobSpec) -> RequestKey:
    """Everything that decides where ``spec`` may run and how it scores (hashable)."""
    return (
        spec.resources,
        spec.placement,
        spec.pricing.max_usd_per_gpu_hour,
        spec.objective,
        spec.replicas,
    )


def _table(size: int, codes: list[int]) -> np.ndarray | None:
    """A boolean lookup table over codes; index -1 (unknown) is always false. None: any."""
    if not codes:
        return None
    table = np.zeros(size + 1, dtype=bool)
    table[codes] = True
    return table


@dataclass(frozen=True, slots=True)
class Request:
    """One request class: the requirements of one replica, in the snapshot's codes."""

    spec: JobSpec
    gpus: int
    replicas: int
    accelerator: int
    models: np.ndarray | None  # lookup table over model codes, None: any
    vram_gib: float | None
    tiers: np.ndarray | None  # lookup table over tier codes, None: any
    regions: tuple[str, ...]
    price_cap: float | None
    max_latency_ms: float | None
    near_xyz: np.ndarray  # (k, 3) unit vectors of where the users are
    weights: tuple[float, float, float]  # cost, latency, reliability; summing to 1

    @classmethod
    def of(cls, spec: JobSpec) -> Request:
        res, place = spec.resources, spec.placement
        near = place.near
        cap = spec.pricing.max_usd_per_gpu_hour
        return cls(
            spec=spec,
            gpus=res.gpus,
            replicas=spec.replicas,
            accelerator=ACCELERATOR_CODES[res.accelerator],
            models=_table(len(MODEL_CODES), [MODEL_CODES[m] for m in res.gpu_models]),
            vram_gib=res.vram_gib,
            tiers=_table(len(TIER_CODES), [TIER_CODES[t] for t in place.tiers]),
            regions=place.regions,
            price_cap=None if cap is None else float(cap),
            max_latency_ms=place.max_latency_ms,
            near_xyz=unit_vectors([p.lat for p in near], [p.lon for p in near]).reshape(
                len(near), 3
            ),
            weights=spec.objective.normalized(),
        )

    @property
    def has_near(self) -> bool:
        return len(self.near_xyz) > 0
