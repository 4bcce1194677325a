"""The real-world supply behind the edge-vs-cloud study: cloud GPU regions and edge prices.

Two CSV files ship with the package in ``depin/study/data`` (``SOURCES.md`` there
says where every figure comes from and which are estimates):

cloud_gpu_regions.csv  one row per AWS / Azure / GCP region that offers a common
                       inference GPU, at its metro, with the on-demand price per GPU-hour
edge_prices.csv        per-GPU-hour prices of the edge supply: metro sites and devices

Every row is checked as it is read; a malformed one raises ``SupplyDataError``
naming the file, the line and what is wrong.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from importlib import resources
from typing import Literal, TypeVar, get_args

Provider = Literal["aws", "azure", "gcp"]
Continent = Literal["Africa", "Asia", "Europe", "North America", "Oceania", "South America"]
EdgeTier = Literal["device", "edge"]
Network = Literal["fiber", "5g", "lte", "wifi"]
PROVIDERS: tuple[Provider, ...] = get_args(Provider)
CONTINENTS: tuple[Continent, ...] = get_args(Continent)
EDGE_TIERS: tuple[EdgeTier, ...] = get_args(EdgeTier)
NETWORKS: tuple[Network, ...] = get_args(Network)

CLOUD_FILE = "cloud_gpu_regions.csv"
EDGE_FILE = "edge_prices.csv"
CLOUD_COLUMNS = (
    "provider",
    "region",
    "city",
    "country",
    "continent",
    "lat",
    "lon",
    "gpu",
    "usd_per_gpu_hour",
    "price_source",
    "price_date",
)
EDGE_COLUMNS = ("tier", "gpu", "usd_per_gpu_hour", "network", "source", "date")
_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_ESTIMATE = "estimate"

Choice = TypeVar("Choice", bound=str)


class SupplyDataError(ValueError):
    """A supply-data file is malformed; the message names the file and line."""


@dataclass(frozen=True, slots=True)
class CloudRegion:
    """One cloud region with a GPU instance, at the metro it is documented at."""

    provider: Provider
    region: str
    city: str
    country: str
    continent: Continent
    lat: float
    lon: float
    gpu: str
    usd_per_gpu_hour: Decimal
    price_source: str
    price_date: str

    @property
    def estimated(self) -> bool:
        """Whether the price is an estimate rather than a published figure."""
        return self.price_source.startswith(_ESTIMATE)


@dataclass(frozen=True, slots=True)
class EdgePrice:
    """The price of one GPU-hour on one kind of edge supply."""

    tier: EdgeTier
    gpu: str
    usd_per_gpu_hour: Decimal
    network: Network
    source: str
    date: str

    @property
    def estimated(self) -> bool:
        """Whether the price is an estimate rather than a published figure."""
        return self.source.startswith(_ESTIMATE)


def cloud_regions() -> list[CloudRegion]:
    """Every cloud GPU region in the packaged ``cloud_gpu_regions.csv``."""
    return parse_cloud_regions(_read(CLOUD_FILE), CLOUD_FILE)


def edge_prices() -> list[EdgePrice]:
    """Every edge price in the packaged ``edge_prices.csv``."""
    return parse_edge_prices(_read(EDGE_FILE), EDGE_FILE)


def parse_cloud_regions(text: str, name: str = CLOUD_FILE) -> list[CloudRegion]:
    """The rows of a ``cloud_gpu_regions.csv`` text, each validated."""
    regions: list[CloudRegion] = []
    seen: dict[tuple[str, str], int] = {}
    for line, row in _rows(text, name, CLOUD_COLUMNS):
        where = f"{name} line {line} ({row['provider']} {row['region']})"
        region = CloudRegion(
            provider=_choice(row["provider"], PROVIDERS, "provider", where),
            region=_text(row["region"], "region", where),
            city=_text(row["city"], "city", where),
            country=_text(row["country"], "country", where),
            continent=_choice(row["continent"], CONTINENTS, "continent", where),
            lat=_degrees(row["lat"], "lat", 90, where),
            lon=_degrees(row["lon"], "lon", 180, where),
            gpu=_text(row["gpu"], "gpu", where),
            usd_per_gpu_hour=_price(row["usd_per_gpu_hour"], where),
            price_source=_text(row["price_source"], "price_source", where),
            price_date=_month(row["price_date"], "price_date", where),
        )
        key = (region.provider, region.region)
        if key in seen:
            raise SupplyDataError(f"{where}: duplicate of line {seen[key]}")
        seen[key] = line
        regions.append(region)
    return regions


def parse_edge_prices(text: str, name: str = EDGE_FILE) -> list[EdgePrice]:
    """The rows of an ``edge_prices.csv`` text, each validated."""
    prices: list[EdgePrice] = []
    for line, row in _rows(text, name, EDGE_COLUMNS):
        where = f"{name} line {line} ({row['tier']} {row['gpu']})"
        prices.append(
            EdgePrice(
                tier=_choice(row["tier"], EDGE_TIERS, "tier", where),
                gpu=_text(row["gpu"], "gpu", where),
                usd_per_gpu_hour=_price(row["usd_per_gpu_hour"], where),
                network=_choice(row["network"], NETWORKS, "network", where),
                source=_text(row["source"], "source", where),
                date=_month(row["date"], "date", where),
            )
        )
    return prices


def _read(filename: str) -> str:
    return resources.files("depin.study").joinpath("data", filename).read_text(encoding="utf-8")


def _rows(text: str, name: str, columns: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(reader.fieldnames or ())
    if header != columns:
        raise SupplyDataError(f"{name}: header is {list(header)}, expected {list(columns)}")
    for row in reader:
        if None in row or any(row[c] is None for c in columns):
            raise SupplyDataError(f"{name} line {reader.line_num}: expected {len(columns)} fields")
        yield reader.line_num, {c: row[c].strip() for c in columns}


def _text(value: str, field: str, where: str) -> str:
    if not value:
        raise SupplyDataError(f"{where}: {field} is empty")
    return value


def _choice(value: str, allowed: tuple[Choice, ...], field: str, where: str) -> Choice:
    for option in allowed:
        if value == option:
            return option
    raise SupplyDataError(f"{where}: {field} {value!r} is not one of {', '.join(allowed)}")


def _degrees(value: str, field: str, limit: int, where: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise SupplyDataError(f"{where}: {field} {value!r} is not a number") from None
    if not -limit <= number <= limit:
        raise SupplyDataError(f"{where}: {field} {number} is outside [-{limit}, {limit}]")
    return number


def _price(value: str, where: str) -> Decimal:
    try:
        price = Decimal(value)
    except InvalidOperation:
        raise SupplyDataError(f"{where}: usd_per_gpu_hour {value!r} is not a number") from None
    if not price.is_finite() or price <= 0:
        raise SupplyDataError(f"{where}: usd_per_gpu_hour {value!r} must be a positive amount")
    return price


def _month(value: str, field: str, where: str) -> str:
    if not _MONTH.match(value):
        raise SupplyDataError(f"{where}: {field} {value!r} is not YYYY-MM")
    return value


__all__ = [
    "CloudRegion",
    "EdgePrice",
    "SupplyDataError",
    "cloud_regions",
    "edge_prices",
    "parse_cloud_regions",
    "parse_edge_prices",
]
