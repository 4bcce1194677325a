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
        mix = {k: v for k, v in mix.items() if TEMPLATES[k](cities()[0])["resources"]["gpus"] == 1}
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
