"""Synthetic but realistic demand: job templates placed near users in real cities.

Users concentrate in big metros, so ``near`` points are drawn from the 300
largest cities, weighted by population. Templates mirror what edge GPU
markets carry: latency-bound inference, vision at the edge, cost-driven batch
work, fine-tuning with data residency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin import manifest
from depin.money import usd_to_micro
from depin.spec import JobSpec
from providers.fleet import City, cities

if TYPE_CHECKING:
    from depin.market import Marketplace

USER_CITIES = 300
SUBMIT_BATCH = 5000
Template = Callable[[City], dict[str, Any]]


def _near(c: City) -> list[dict[str, float]]:
    return [{"lat": c.lat, "lon": c.lon}]


TEMPLATES: dict[str, Template] = {
    "chat-inference": lambda c: {
        "resources": {"gpus": 1, "vram_gib": 16, "gpu_models": ["RTX 4090", "L4", "A10G", "L40S"]},
        "placement": {"near": _near(c), "max_latency_ms": 30},
        "objective": {"cost": 0.3, "latency": 0.6, "reliability": 0.1},
    },
    "edge-vision": lambda c: {
        "resources": {"gpus": 1, "vram_gib": 8},
        "placement": {"near": _near(c), "max_latency_ms": 20, "tiers": ["device", "edge"]},
        "objective": {"cost": 0.4, "latency": 0.5, "reliability": 0.1},
    },
    "batch-embeddings": lambda c: {
        "resources": {"gpus": 1, "vram_gib": 24},
        "pricing": {"max_usd_per_gpu_hour": "0.60"},
        "objective": {"cost": 1.0, "latency": 0.0, "reliability": 0.0},
    },
    "resident-inference": lambda c: {
        "resources": {"gpus": 1, "vram_gib": 24},
        "placement": {"near": _near(c), "max_latency_ms": 45, "regions": [c.region.split("-")[0]]},
    },
    "llm-batch": lambda c: {
        "resources": {"gpus": 4, "vram_gib": 40},
        "objective": {"cost": 1.0, "latency": 0.0, "reliability": 0.0},
    },
    "fine-tune": lambda c: {
        "resources": {"gpus": 8, "gpu_models": ["A100-80GB", "H100-80GB"]},
        "placement": {"regions": [c.region.split("-")[0]]},
        "objective": {"cost": 0.7, "latency": 0.0, "reliability": 0.3},
    },
}
MIX = {
    "chat-inference": 0.35,
    "edge-vision": 0.25,
    "batch-embeddings": 0.15,
    "resident-inference": 0.15,
    "llm-batch": 0.07,
    "fine-tune": 0.03,
}


def synthetic_jobs(
    n: int,
    *,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    cost_only: bool = False,
    single_gpu: bool = False,
) -> list[JobSpec]:
    """``n`` jobs from the template mix, users in big cities.

    ``cost_only`` replaces every objective by cost alone; ``single_gpu`` keeps
    only the one-GPU templates (the instances where a flow is exact).
    """
    rng = np.random.default_rng(seed)
    mix = dict(mix or MIX)
    if single_gpu:
        mix = {k: v for k, v in mix.items() if _one_gpu(k)}
    names = list(mix)
    weights = np.array([mix[k] for k in names])
    pool = cities()[:USER_CITIES]
    pop = np.array([c.population for c in pool], dtype=np.float64)
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    where = rng.choice(len(pool), size=n, p=pop / pop.sum())
    cache: dict[tuple[int, int], JobSpec] = {}
    jobs = []
    for i in range(n):
        key = (int(picks[i]), int(where[i]))
        base = cache.get(key)
        if base is None:
            fields = TEMPLATES[names[key[0]]](pool[key[1]])
            if cost_only:
                fields["objective"] = {"cost": 1.0, "latency": 0.0, "reliability": 0.0}
            base = cache[key] = JobSpec.model_validate(
                {
                    "name": names[key[0]],
                    "command": ["python", "-c", "pass"],
                    "max_duration_s": 600,
                    **fields,
                }
            )
        jobs.append(base.model_copy(update={"name": f"{base.name}-{i}"}))
    return jobs


# -- the distinct mix: every job its own request --------------------------------------------------

WORKLOADS = ("template", "distinct")
USER_SPREAD_KM = 25.0  # mean distance of a job's users from its city centre (exponential)
USER_SPREAD_MAX_KM = 150.0
REGION_SHARE = 0.2  # jobs with a data-residency rule
TIER_SUBSETS = (("device",), ("edge",), ("regional",), ("device", "edge"), ("edge", "regional"))
VRAM_CHOICES_GIB = (4.0, 8.0, 12.0, 16.0, 20.0, 24.0, 32.0, 40.0, 48.0, 80.0)


def distinct_jobs(
    n: int, *, seed: int = 0, cost_only: bool = False, single_gpu: bool = False
) -> list[JobSpec]:
    """``n`` jobs from the template mix where no two ask for the same thing.

    Each job's users stand around its city, not at its centre; its latency
    budget, price cap and money budget are continuous draws around the
    template's; its VRAM is drawn from the sizes GPUs come in; half name tiers
    (a random subset) and a fifth name a region. Built as plain dicts and
    validated once each: nothing is shared between jobs.
    """
    rng = np.random.default_rng(seed)
    names = [k for k in MIX if not single_gpu or _one_gpu(k)]
    weights = np.array([MIX[k] for k in names])
    pool = cities()[:USER_CITIES]
    pop = np.array([c.population for c in pool], dtype=np.float64)
    picks = rng.choice(len(names), size=n, p=weights / weights.sum())
    where = rng.choice(len(pool), size=n, p=pop / pop.sum())
    spread_km = np.minimum(rng.exponential(USER_SPREAD_KM, size=n), USER_SPREAD_MAX_KM)
    bearing = rng.uniform(0.0, 2 * np.pi, size=n)
    budget_factor = rng.uniform(0.75, 1.6, size=n)
    cap_factor = rng.uniform(0.8, 3.0, size=n)
    capped = rng.random(n) < 0.7
    money = rng.uniform(5.0, 500.0, size=n)
    vram = rng.choice(len(VRAM_CHOICES_GIB), size=n)
    tiered = rng.random(n) < 0.5
    tier_pick = rng.choice(len(TIER_SUBSETS), size=n)
    regional = rng.random(n) < REGION_SHARE
    jobs = []
    for i in range(n):
        name, c = names[int(picks[i])], pool[int(where[i])]
        fields = TEMPLATES[name](c)
        lat, lon = _offset(c.lat, c.lon, float(spread_km[i]), float(bearing[i]))
        res, place = dict(fields["resources"]), dict(fields.get("placement", {}))
        if "vram_gib" in res:
            res["vram_gib"] = min(VRAM_CHOICES_GIB[int(vram[i])], 2 * res["vram_gib"])
        if "near" in place:
            place["near"] = [{"lat": lat, "lon": lon}]
            place["max_latency_ms"] = round(place["max_latency_ms"] * float(budget_factor[i]), 3)
        if tiered[i] and name not in ("llm-batch", "fine-tune"):
            place["tiers"] = list(TIER_SUBSETS[int(tier_pick[i])])
        if regional[i]:
            place["regions"] = [c.region if rng.random() < 0.5 else c.region.split("-")[0]]
        pricing = dict(fields.get("pricing", {}))
        typical = 0.5 if res["gpus"] == 1 else 2.0
        cap = float(pricing.get("max_usd_per_gpu_hour", typical)) * float(cap_factor[i])
        if "max_usd_per_gpu_hour" in pricing or capped[i]:
            pricing["max_usd_per_gpu_hour"] = f"{cap:.6f}"
        pricing["budget_usd"] = f"{money[i]:.6f}"
        objective = (
            {"cost": 1.0, "latency": 0.0, "reliability": 0.0}
            if cost_only
            else fields.get("objective", {})
        )
        jobs.append(
            JobSpec.model_validate(
                {
                    "name": f"{name}-{i}",
                    "command": ["python", "-c", "pass"],
                    "max_duration_s": 600,
                    "resources": res,
                    "placement": place,
                    "pricing": pricing,
                    "objective": objective,
                }
            )
        )
    return jobs


def _offset(lat: float, lon: float, km: float, bearing: float) -> tuple[float, float]:
    """The point ``km`` from (lat, lon) on ``bearing`` (radians), on a sphere."""
    r = km / 6371.0088
    p1, l1 = np.radians(lat), np.radians(lon)
    p2 = np.arcsin(np.sin(p1) * np.cos(r) + np.cos(p1) * np.sin(r) * np.cos(bearing))
    l2 = l1 + np.arctan2(
        np.sin(bearing) * np.sin(r) * np.cos(p1), np.cos(r) - np.sin(p1) * np.sin(p2)
    )
    return float(np.degrees(p2)), float((np.degrees(l2) + 180.0) % 360.0 - 180.0)


def workload_jobs(
    workload: str, n: int, *, seed: int = 0, cost_only: bool = False, single_gpu: bool = False
) -> list[JobSpec]:
    """The jobs of a named workload (``WORKLOADS``)."""
    if workload == "distinct":
        return distinct_jobs(n, seed=seed, cost_only=cost_only, single_gpu=single_gpu)
    return synthetic_jobs(n, seed=seed, cost_only=cost_only, single_gpu=single_gpu)


def _one_gpu(template: str) -> bool:
    return TEMPLATES[template](cities()[0])["resources"]["gpus"] == 1


def submit_as_new_developer(
    market: Marketplace, specs: Sequence[JobSpec], run_id: str
) -> list[int]:
    """A funded developer ``bench-dev-{run_id}`` signs and submits ``specs``, a batch at a time."""
    key = Ed25519PrivateKey.generate()
    developer = f"bench-dev-{run_id}"
    market.create_account(developer, key.public_key())
    market.deposit(developer, usd_to_micro(Decimal(10_000_000)))
    ids: list[int] = []
    for start in range(0, len(specs), SUBMIT_BATCH):
        envelopes = [
            manifest.sign(s, key, issuer=developer, audience=market.market_id, ttl_s=3600)
            for s in specs[start : start + SUBMIT_BATCH]
        ]
        ids += market.submit_many(envelopes)
    return ids
