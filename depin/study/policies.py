"""The edge study's policies: where each one serves every sampled request.

cloud-nearest    the nearest cloud GPU region
cloud-cheapest   the cheapest cloud region (the nearest of those at that price)
edge-nearest     the nearest edge or device site with room, else the nearest cloud
depin            ``scheduler.plan`` with each request's budget (and a price cap)
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from depin.spec import JobSpec
from depin.study.world import World
from scheduler import Offer, plan
from scheduler.latency import ACCESS_RTT_MS, MIN_RTT_MS, ROUTE_STRETCH

MAX_SLOTS_PER_JOB = 64  # a planned job is at most this many sampled requests (spec bound)
SLO_MS = 50.0  # the seed's real-time threshold


@dataclass(slots=True)
class Outcome:
    """Where one policy served every sampled request."""

    site: npt.NDArray[np.int64]
    rtt_ms: npt.NDArray[np.float64]
    placed: npt.NDArray[np.bool_]  # by the policy itself (not the best-effort fallback)
    relaxed: npt.NDArray[np.bool_] | None = None  # depin: placed with its budget relaxed
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
    """Each request to the nearest edge or device site with room; where none has room left,
    the nearest cloud region."""
    left = w.sites.slots.copy()
    local = np.flatnonzero(w.sites.tier != "regional")
    cloud = np.flatnonzero(w.sites.tier == "regional")
    order = local[np.argsort(w.city_km[:, local], axis=1, kind="stable")]
    nearest_cloud = cloud[np.argmin(w.city_km[:, cloud], axis=1)]
    site = np.empty(len(w.demand.city), dtype=np.int64)
    placed = np.zeros(len(site), dtype=bool)
    for r, city in enumerate(w.demand.city.tolist()):
        site[r] = nearest_cloud[city]
        for s in order[city].tolist():
            if left[s] > 0:
                site[r], placed[r] = s, True
                left[s] -= 1
                break
    return Outcome(site, w.rtt_to(site), placed)


def depin(w: World, *, cap_usd_per_gpu_hour: float | None = None) -> Outcome:
    """``scheduler.plan`` over every site, each group of requests (city, budget, access) a
    job of one slot per request with its budget less the user's access RTT.

    What the first plan cannot place within budget (an LTE user's 20 ms: its access network
    alone takes 35) is planned again with the budget relaxed to 50 ms, the seed's real-time
    threshold, as a developer would resubmit it; ``placed`` says which requests either plan
    placed. What neither places is served best effort by the nearest site with room within
    the cap (above it only where none within has room), and is late or over the cap.
    """
    offers = _offers(w)
    site = np.full(len(w.demand.city), -1, dtype=np.int64)
    used = np.zeros(len(w.sites), dtype=np.int64)
    first = np.zeros(len(site), dtype=bool)
    for relaxed_ms in (None, SLO_MS):
        todo = np.flatnonzero(site < 0)
        jobs, members = _jobs(w, todo, cap_usd_per_gpu_hour, relaxed_ms)
        if not jobs:
            continue
        free = [
            replace(o, gpus_free=int(w.sites.slots[o.node_id] - used[o.node_id])) for o in offers
        ]
        result = plan(jobs, free, mode="auto", keys=list(range(len(jobs))))
        for a in result.placements:
            requests = members[int(a.job)]  # type: ignore[call-overload]
            site[requests] = a.node_id
            used[a.node_id] += len(requests)
        if relaxed_ms is None:
            first = site >= 0
    placed = site >= 0
    _best_effort(w, site, used, cap_usd_per_gpu_hour)
    return Outcome(site, w.rtt_to(site), placed, relaxed=placed & ~first)


def _offers(w: World) -> list[Offer]:
    """The sites as the scheduler sees them. Its model has its own route stretch: a site's
    RTT bias of (k - 1) x its access RTT, with budgets scaled by k (``_jobs``), makes every
    feasibility decision exact under this run's stretch."""
    k = ROUTE_STRETCH / w.a.route_stretch
    return [
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
            rtt_bias_ms=(k - 1) * ACCESS_RTT_MS[w.sites.network[s]],
        )
        for s in range(len(w.sites))
    ]


def _jobs(
    w: World, todo: npt.NDArray[np.int64], cap: float | None, relaxed_ms: float | None
) -> tuple[list[JobSpec], list[list[int]]]:
    """One job per (city, budget, access) group of the requests ``todo``, split into chunks
    of at most ``MAX_SLOTS_PER_JOB``; a group whose budget its access network alone exceeds
    gets none. ``relaxed_ms``: the budget is at least this."""
    groups: dict[tuple[int, float, str], list[int]] = defaultdict(list)
    for r in todo.tolist():
        groups[int(w.demand.city[r]), float(w.demand.budget_ms[r]), str(w.demand.access[r])].append(
            r
        )
    k = ROUTE_STRETCH / w.a.route_stretch
    pricing = {} if cap is None else {"max_usd_per_gpu_hour": cap}
    jobs, members = [], []
    for (city, budget, access), requests in groups.items():
        spare = max(budget, relaxed_ms or 0.0) - w.a.access(access)
        planned = k * spare  # with the offers' bias: exact under this run's stretch
        if planned <= MIN_RTT_MS:
            continue
        base = {
            "command": ["true"],
            "placement": {
                "near": [{"lat": float(w.cities.lat[city]), "lon": float(w.cities.lon[city])}],
                "max_latency_ms": planned,
            },
            "pricing": pricing,
            "objective": dict(w.a.objective),
            "max_duration_s": 3600,
        }
        for start in range(0, len(requests), MAX_SLOTS_PER_JOB):
            chunk = requests[start : start + MAX_SLOTS_PER_JOB]
            spec = {**base, "name": f"g{len(jobs)}", "resources": {"gpus": len(chunk)}}
            jobs.append(JobSpec.model_validate(spec))
            members.append(chunk)
    return jobs, members


def _best_effort(
    w: World, site: npt.NDArray[np.int64], used: npt.NDArray[np.int64], cap: float | None
) -> None:
    """Serve what no plan placed at the nearest site with room, within the cap where any
    site within it has room."""
    left = w.sites.slots - used
    order = np.argsort(w.city_km, axis=1, kind="stable")
    within = np.ones(len(w.sites), dtype=bool) if cap is None else w.sites.price <= cap
    for r in np.flatnonzero(site < 0).tolist():
        candidates = order[w.demand.city[r]].tolist()
        for s in [c for c in candidates if within[c]] + [c for c in candidates if not within[c]]:
            if left[s] > 0:
                site[r] = s
                left[s] -= 1
                break
