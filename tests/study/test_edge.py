"""The edge study on a small instance: its figures hold together, and its RTTs are right.

The RTT check is independent of the study's code: its own haversine, its own search for
the nearest region, and the access RTTs written out here.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cli import cli
from depin.study import edge, policies
from depin.study.report import cdf
from depin.study.world import Assumptions, World

SMALL = Assumptions(cities=120, requests=3000, seed=3, caps_for_plot=(0.3, 1.0))


@pytest.fixture(scope="module")
def study() -> edge.Study:
    return edge.run(SMALL)


def test_every_policy_serves_every_request(study: edge.Study) -> None:
    assert set(study.outcomes) == set(edge.POLICIES)
    for outcome in study.outcomes.values():
        assert len(outcome.site) == SMALL.requests and (outcome.site >= 0).all()


def test_shares_lie_in_zero_to_one_and_percentiles_are_ordered(study: edge.Study) -> None:
    for f in [o.figures for o in study.outcomes.values()] + [
        o.figures for o in study.caps.values()
    ]:
        for key in ("share_under_50ms", "share_within_budget", "share_placed_by_policy"):
            assert 0.0 <= f[key] <= 1.0
        assert f["share_under_20ms"] <= f["share_under_50ms"] <= f["share_under_100ms"]
        assert 0 < f["p50_ms"] <= f["p95_ms"] <= f["p99_ms"]


def test_rtt_cdfs_are_monotone_and_end_at_one(study: edge.Study) -> None:
    for outcome in study.outcomes.values():
        x, y = cdf(outcome.rtt_ms)
        assert (np.diff(x) >= 0).all() and (np.diff(y) > 0).all() and y[-1] == 1.0


# Memory bandwidth in GB/s (NVIDIA data sheets), written out here: requests per GPU-hour
# scale with it from the L4's 36,000.
BANDWIDTH = {"L4": 300, "T4": 320, "A10": 600, "A10G": 600, "RTX 4090": 1008}
BANDWIDTH["Jetson AGX Orin 64GB"] = 204.8


def _prices_from_the_data() -> dict[str, float]:
    """Each site's price per request, from the CSV files themselves (not the loader)."""
    data = Path(edge.__file__).parent / "data"
    per_request = {}
    with (data / "cloud_gpu_regions.csv").open() as f:
        for row in csv.DictReader(f):
            name = f"{row['provider']} {row['region']} ({row['city']})"
            rate = 36_000 * BANDWIDTH[row["gpu"]] / 300
            per_request[name] = float(row["usd_per_gpu_hour"]) / rate
    with (data / "edge_prices.csv").open() as f:
        for row in csv.DictReader(f):
            per_request.setdefault(
                row["tier"], float(row["usd_per_gpu_hour"]) / (36_000 * BANDWIDTH[row["gpu"]] / 300)
            )
    return per_request


def test_a_policys_cost_adds_up_from_per_request_prices(study: edge.Study) -> None:
    prices = _prices_from_the_data()
    w = study.world
    for name, outcome in study.outcomes.items():
        total = 0.0
        for site in outcome.site.tolist():  # one request at a time, price by price
            tier = str(w.sites.tier[site])
            total += prices[tier if tier != "regional" else w.sites.name[site]]
        expected = 1000 * total / SMALL.requests
        assert outcome.figures["cost_usd_per_1000_requests"] == pytest.approx(expected), name


def test_provisioned_cost_runs_whole_gpus_for_the_hour(study: edge.Study) -> None:
    for f in (o.figures for o in study.outcomes.values()):
        assert f["cost_provisioned_usd_per_1000_requests"] >= f["cost_usd_per_1000_requests"]
        assert 0 < f["gpu_utilisation"] <= 1


def test_continents_partition_the_requests(study: edge.Study) -> None:
    data = edge.summary(study)
    for name in edge.POLICIES:
        parts = data["by_continent"][name].values()
        assert sum(p["requests"] for p in parts) == SMALL.requests
        under = sum(p["share_under_50ms"] * p["requests"] for p in parts) / SMALL.requests
        assert under == pytest.approx(data["policies"][name]["share_under_50ms"])


def test_depin_never_does_worse_on_budgets_than_the_nearest_cloud(study: edge.Study) -> None:
    ours, cloud = study.outcomes["depin"].figures, study.outcomes["cloud-nearest"].figures
    assert ours["share_within_budget"] >= cloud["share_within_budget"]


@pytest.mark.parametrize("stretch", [1.2, 1.5, 2.0])
def test_what_depin_plans_fits_its_budget_under_any_route_stretch(stretch: float) -> None:
    """What plan() placed meets the request's budget (relaxed to 50 ms where its access
    network alone exceeds it) under the run's own stretch, without metro edge sites so
    that the 5G devices are tried."""
    a = replace(SMALL, route_stretch=stretch, metro_share=0.0)
    w = World.build(a)
    o = policies.depin(w)
    assert o.relaxed is not None
    first = o.placed & ~o.relaxed
    assert (o.rtt_ms[first] <= w.demand.budget_ms[first] + 1e-6).all()
    relaxed = np.maximum(w.demand.budget_ms[o.relaxed], 50.0)
    assert (o.rtt_ms[o.relaxed] <= relaxed + 1e-6).all()
    assert o.placed.mean() > 0.9  # the devices near each city do fit


def test_a_capped_plan_never_places_above_its_cap() -> None:
    w = World.build(SMALL)
    o = policies.depin(w, cap_usd_per_gpu_hour=0.3)
    assert (w.sites.price[o.site[o.placed]] <= 0.3).all()
    # What no plan placed goes above the cap only where nothing within it had room.
    late = o.site[~o.placed]
    assert (w.sites.price[late] <= 0.3).all() or (w.sites.tier[late] != "device").all()


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371.0088
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    a = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    )
    return 2 * r * math.asin(math.sqrt(a))


def test_cloud_nearest_rtts_match_an_independent_great_circle_computation() -> None:
    w = World.build(SMALL)
    outcome = policies.cloud_nearest(w)
    access = {"5g": 12.0, "lte": 35.0, "fiber": 2.0}  # the model's, written out
    regions = [i for i, tier in enumerate(w.sites.tier.tolist()) if tier == "regional"]
    for r in range(0, SMALL.requests, 37):
        city = int(w.demand.city[r])
        lat, lon = float(w.cities.lat[city]), float(w.cities.lon[city])
        km = {
            s: _haversine_km(lat, lon, float(w.sites.lat[s]), float(w.sites.lon[s]))
            for s in regions
        }
        nearest = min(km, key=km.__getitem__)
        assert km[int(outcome.site[r])] == pytest.approx(km[nearest], abs=1e-6)
        expected = access[str(w.demand.access[r])] + 2.0 + 2 * km[nearest] * 1.5 / 200
        assert outcome.rtt_ms[r] == pytest.approx(expected, rel=1e-9)


def test_the_command_writes_its_report_and_prints_json(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli,
        ["study", "edge", "--cities", "60", "--requests", "800", "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert set(data["policies"]) == set(edge.POLICIES)
    for figures in data["policies"].values():
        assert {
            "share_under_50ms",
            "share_within_budget",
            "p50_ms",
            "p95_ms",
            "p99_ms",
            "cost_usd_per_1000_requests",
            "gpus",
        } <= set(figures)
    assert {"cloud_share_over_50ms", "latency_reduction"} <= set(data["claims"])
    assert len(data["sensitivity"]) == sum(len(v) for v in edge.SENSITIVITY.values())
    for name in ("README.md", "rtt_cdf.png", "sites_map.png", "cost_vs_slo.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "rtt_cdf.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
