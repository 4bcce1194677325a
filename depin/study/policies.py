"""The edge study's policies: where each one serves every sampled request.

cloud-nearest    the nearest cloud GPU region
cloud-cheapest   the cheapest cloud region (the nearest of those at that price)
edge-nearest     the nearest edge or device site with room, else the nearest cloud
depin            ``scheduler.plan`` with each request's budget (and a price cap)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from depin.spec import JobSpec
from depin.study.world import World
from scheduler import Offer, plan
from scheduler.latency import ACCESS_RTT_MS, MIN_RTT_MS, ROUTE_STRETCH

MAX_SLOTS_PER_JOB = 64  # a planned job is at most this many sampled requests (spec bound)


@dataclass(slots=True)
class Outcome:
    """Where one policy served every sampled request."""

    site: npt.NDArray[np.int64]
    rtt_ms: npt.NDArray[np.float64]
    placed: npt.NDArray[np.bool_]  # by the policy itself (not the best-effort fallback)
    figures: dict[str, Any] = field(default_factory=dict)


def cloud_nearest(w: World) -> Outcome:
    cloud = np.flatnonzero(w.sites.tier == "regional")
    nearest = cloud[np.argmin(w.city_km[:, cloud], axis=1)]
    site = nearest[w.demand.city]
    return Outcome(site, w.rtt_to(site), np.ones(len(site), dtype=bool))


def cloud_cheapest(w: World) -> Outcome:
    cloud = np.flatnonzero(w.sites.tier == "regional")
    prices = w.sites.price[cloud]
    cheapest = cloud[prices == prices.min()]
    # Among regions at the lowest price, each city's nearest.
    nearest = cheapest[np.argmin(w.city_km[:, cheapest], axis=1)]
    site = nearest[w.demand.city]
    return Outcome(site, w.rtt_to(site), np.ones(len(site), dtype=bool))


def edge_nearest(w: World) -> Outcome:
    """Each request to the nearest edge or device site with room; else the nearest cloud."""
    left = w.sites.slots.copy()
    order = np.argsort(w.city_km, axis=1, kind="stable")
    site = np.empty(len(w.demand.city), dtype=np.int64)
    placed = np.zeros(len(site), dtype=bool)
    for r, city in enumerate(w.demand.city.tolist()):
        for s in order[city].tolist():
            if w.sites.tier[s] == "regional" or left[s] > 0:
                site[r], placed[r] = s, w.sites.tier[s] != "regional"
                left[s] -= 1
                break
    return Outcome(site, w.rtt_to(site), placed)


def depin(w: World, *, cap_usd_per_gpu_hour: float | None = None) -> Outcome:
    """``scheduler.plan`` over every site: each group of requests (city, budget, access) a
    job of one slot per request, its budget less the user's access RTT; what it cannot
    place within budget is served by the nearest site with room, and counts as late."""
    jobs, members = _jobs(w, cap_usd_per_gpu_hour)
    offers = [
        Offer(
            node_id=s,
            gpu_model=w.sites.gpu_model[s],
            gpus_free=int(w.sites.slots[s]),
            vram_gib=24.0,
            price_usd_per_gpu_hour=float(w.sites.price[s]),
            lat=float(w.sites.lat[s]),
            lon=float(w.sites.lon[s]),
            tier=str(w.sites.tier[s]),
            region="world",
            network=w.sites.network[s],
            reliability=1.0,
            accelerator="gpu",
        )
        for s in range(len(w.sites))
    ]
    result = plan(jobs, offers, mode="auto", keys=list(range(len(jobs))))
    site = np.full(len(w.demand.city), -1, dtype=np.int64)
    used = np.zeros(len(w.sites), dtype=np.int64)
    for a in result.placements:
        requests = members[int(a.job)]  # type: ignore[call-overload]
        site[requests] = a.node_id
        used[a.node_id] += len(requests)
    placed = site >= 0
    _best_effort(w, site, used)
    return Outcome(site, w.rtt_to(site), placed)


def _jobs(w: World, cap: float | None) -> tuple[list[JobSpec], list[list[int]]]:
    """One job per (city, budget, access) group, split into chunks of at most
    ``MAX_SLOTS_PER_JOB`` requests; a group whose budget its access network alone exceeds
    gets none (it is served best effort)."""
    groups: dict[tuple[int, float, str], list[int]] = defaultdict(list)
    for r, key in enumerate(
        zip(
            w.demand.city.tolist(),
            w.demand.budget_ms.tolist(),
            w.demand.access.tolist(),
            strict=True,
        )
    ):
        groups[key].append(r)
    fiber = ACCESS_RTT_MS["fiber"]
    k = ROUTE_STRETCH / w.a.route_stretch
    pricing = {} if cap is None else {"max_usd_per_gpu_hour": cap}
    jobs, members = [], []
    for (city, budget, access), requests in groups.items():
        spare = budget - w.a.access(access)
        # The scheduler's model has its own route stretch: a budget scaled so that a fibre
        # site fits exactly when it fits under this run's stretch (sites on 5G nearly so).
        planned = fiber + (spare - fiber) * k
        if planned <= MIN_RTT_MS:
            continue
        base = {
            "command": ["true"],
            "placement": {
                "near": [{"lat": float(w.cities.lat[city]), "lon": float(w.cities.lon[city])}],
                "max_latency_ms": planned,
            },
            "pricing": pricing,
            "objective": {"cost": 0.6, "latency": 0.4, "reliability": 0.0},
            "max_duration_s": 3600,
        }
        for start in range(0, len(requests), MAX_SLOTS_PER_JOB):
            chunk = requests[start : start + MAX_SLOTS_PER_JOB]
            spec = {**base, "name": f"g{len(jobs)}", "resources": {"gpus": len(chunk)}}
            jobs.append(JobSpec.model_validate(spec))
            members.append(chunk)
    return jobs, members


def _best_effort(w: World, site: npt.NDArray[np.int64], used: npt.NDArray[np.int64]) -> None:
    """Serve what was not placed at the nearest site with room left."""
    left = w.sites.slots - used
    order = np.argsort(w.city_km, axis=1, kind="stable")
    for r in np.flatnonzero(site < 0).tolist():
        for s in order[w.demand.city[r]].tolist():
            if left[s] > 0:
                site[r] = s
                left[s] -= 1
                break
