"""The packaged supply data: enough regions, plausible prices, cities where they say they are."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from depin.study.supply_data import (
    CLOUD_COLUMNS,
    SupplyDataError,
    cloud_regions,
    edge_prices,
    parse_cloud_regions,
    parse_edge_prices,
)
from providers.catalog import lookup

CLOUD_GPUS = {"A10G", "L4", "T4", "A10"}
PLAUSIBLE = (Decimal("0.05"), Decimal("10"))

# Metro centres from public gazetteers, independent of the CSV: (provider, region) -> (lat, lon).
KNOWN_METROS = {
    ("aws", "us-east-1"): (39.0437, -77.4875),  # Ashburn, Virginia
    ("aws", "eu-west-1"): (53.3498, -6.2603),  # Dublin
    ("aws", "ap-southeast-2"): (-33.8688, 151.2093),  # Sydney
    ("aws", "af-south-1"): (-33.9249, 18.4241),  # Cape Town
    ("gcp", "europe-west4"): (53.4400, 6.8300),  # Eemshaven, Groningen
    ("gcp", "us-central1"): (41.2619, -95.8608),  # Council Bluffs, Iowa
    ("gcp", "southamerica-east1"): (-23.5505, -46.6333),  # São Paulo
    ("gcp", "asia-northeast1"): (35.6895, 139.6917),  # Tokyo
    ("azure", "westeurope"): (52.3676, 4.9041),  # Amsterdam
    ("azure", "westus2"): (47.2343, -119.8526),  # Quincy, Washington
}

# Generous boxes (lat_min, lat_max, lon_min, lon_max): a swapped sign or lat/lon lands outside.
CONTINENT_BOXES = {
    "North America": (7, 84, -170, -50),
    "South America": (-56, 13, -82, -34),
    "Europe": (34, 72, -25, 45),
    "Africa": (-35, 38, -18, 52),
    "Asia": (-11, 82, 25, 180),
    "Oceania": (-50, 0, 110, 180),
}

HEADER = ",".join(CLOUD_COLUMNS)
GOOD_ROW = "aws,us-east-1,Ashburn,United States,North America,39.04,-77.49,L4,0.8048,list,2026-12"


def _km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on a sphere of the Earth's mean radius (haversine)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6371.0088 * math.asin(math.sqrt(h))


def test_the_haversine_matches_a_known_distance() -> None:
    assert _km(51.5072, -0.1276, 48.8566, 2.3522) == pytest.approx(344, abs=3)  # London-Paris
    assert _km(10, 20, 10, 20) == 0


def test_cloud_regions_span_three_providers_and_five_continents() -> None:
    regions = cloud_regions()
    assert len(regions) >= 30
    assert {r.provider for r in regions} == {"aws", "azure", "gcp"}
    assert len({r.continent for r in regions}) >= 5
    assert {r.gpu for r in regions} <= CLOUD_GPUS


def test_every_price_is_positive_and_plausible() -> None:
    low, high = PLAUSIBLE
    for r in cloud_regions():
        assert low <= r.usd_per_gpu_hour <= high, r
    for p in edge_prices():
        assert low <= p.usd_per_gpu_hour <= high, p


@pytest.mark.parametrize(("key", "metro"), sorted(KNOWN_METROS.items()))
def test_known_regions_sit_at_their_metros(
    key: tuple[str, str], metro: tuple[float, float]
) -> None:
    by_key = {(r.provider, r.region): r for r in cloud_regions()}
    region = by_key[key]
    assert _km(region.lat, region.lon, *metro) < 100, region


def test_every_region_lies_on_its_continent() -> None:
    for r in cloud_regions():
        lat_min, lat_max, lon_min, lon_max = CONTINENT_BOXES[r.continent]
        assert lat_min <= r.lat <= lat_max and lon_min <= r.lon <= lon_max, r


def test_edge_prices_cover_both_tiers_on_their_networks() -> None:
    prices = edge_prices()
    assert 2 <= len(prices) <= 4
    assert {p.tier for p in prices} == {"edge", "device"}
    for p in prices:
        assert p.network == ("fiber" if p.tier == "edge" else "5g"), p
        assert lookup(p.gpu).name == p.gpu, p


def test_estimates_are_marked_as_such() -> None:
    device = [p for p in edge_prices() if p.tier == "device"]
    assert device and all(p.estimated for p in device)
    for r in cloud_regions():
        assert r.estimated == r.price_source.startswith("estimate"), r


@pytest.mark.parametrize(
    ("row", "complaint"),
    [
        (GOOD_ROW.replace("39.04", "95.0"), "lat 95.0 is outside"),
        (GOOD_ROW.replace("-77.49", "-190"), "lon -190.0 is outside"),
        (GOOD_ROW.replace("39.04", "north"), "lat 'north' is not a number"),
        (GOOD_ROW.replace("aws", "oracle"), "provider 'oracle' is not one of"),
        (GOOD_ROW.replace("North America", "Atlantis"), "continent 'Atlantis'"),
        (GOOD_ROW.replace("0.8048", "-0.80"), "must be a positive amount"),
        (GOOD_ROW.replace("0.8048", "0"), "must be a positive amount"),
        (GOOD_ROW.replace("2026-12", "Dec 2026"), "is not YYYY-MM"),
        (GOOD_ROW.replace("Ashburn", ""), "city is empty"),
        (GOOD_ROW.rsplit(",", 1)[0], "expected 11 fields"),
        (GOOD_ROW + ",extra", "expected 11 fields"),
    ],
)
def test_a_malformed_cloud_row_is_refused_by_name(row: str, complaint: str) -> None:
    with pytest.raises(SupplyDataError, match=r"regions\.csv line 3") as caught:
        parse_cloud_regions(f"{HEADER}\n{GOOD_ROW.replace('us-east-1', 'us-east-2')}\n{row}\n")
    assert complaint in str(caught.value)


def test_a_duplicate_region_and_a_wrong_header_are_refused() -> None:
    with pytest.raises(SupplyDataError, match=r"line 3 .*duplicate of line 2"):
        parse_cloud_regions(f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW}\n")
    with pytest.raises(SupplyDataError, match="header is"):
        parse_cloud_regions(f"{HEADER.replace('lat', 'latitude')}\n{GOOD_ROW}\n")


def test_a_malformed_edge_row_is_refused_by_name() -> None:
    header = "tier,gpu,usd_per_gpu_hour,network,source,date"
    with pytest.raises(SupplyDataError, match=r"edge_prices\.csv line 2 .*tier 'cloud'"):
        parse_edge_prices(f"{header}\ncloud,L4,0.5,fiber,list,2026-12\n")
    with pytest.raises(SupplyDataError, match="network 'dsl'"):
        parse_edge_prices(f"{header}\nedge,L4,0.5,dsl,list,2026-12\n")
    assert parse_edge_prices(f"{header}\nedge,L4,0.5,fiber,list,2026-12\n")[0].gpu == "L4"
