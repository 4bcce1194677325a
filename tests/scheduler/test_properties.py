"""Properties of plan() over random small markets (hypothesis).

The oracle checks constraints with the scalar haversine model, independent of
the vectorized dot-product path the scheduler takes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depin.spec import JobSpec
from providers.catalog import lookup
from scheduler import Code, Offer, Snapshot, admit, plan
from scheduler.latency import estimate_rtt_ms
from scheduler.plan import MODES
from tests.factories import BERLIN, FRANKFURT, NEW_YORK, PARIS, TOKYO, near, offer

CITIES = [BERLIN, PARIS, FRANKFURT, NEW_YORK, TOKYO]
REGIONS = ["eu-central", "eu-west", "us-east", "ap-northeast"]
MODELS = ["RTX 4090", "L4", "A100-80GB", "Jetson Orin Nano 8GB", "Coral Edge TPU"]
PRICES = [0.05, 0.3, 0.45, 0.5, 1.2, 2.0]

PROPERTY_SETTINGS = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def offers(draw: Any) -> list[Offer]:
    n = draw(st.integers(1, 10))
    out = []
    for i in range(n):
        model = draw(st.sampled_from(MODELS))
        lat, lon = draw(st.sampled_from(CITIES))
        gpus = draw(st.integers(1, 4))
        out.append(
            Offer(
                node_id=i + 1,
                gpu_model=model,
                gpus_free=draw(st.integers(0, gpus)),
                vram_gib=lookup(model).memory_gib,
                price_usd_per_gpu_hour=draw(st.sampled_from(PRICES)),
                lat=lat,
                lon=lon,
                tier=draw(st.sampled_from(["device", "edge", "regional"])),
                region=draw(st.sampled_from(REGIONS)),
                network=draw(st.sampled_from(["fiber", "5g", "wifi"])),
                reliability=draw(st.sampled_from([0.9, 0.95, 0.99])),
                accelerator=lookup(model).kind,
                gpus_total=gpus,
                available=draw(st.sampled_from([True, True, True, False])),  # offline: 1 in 4
            )
        )
    return out


@st.composite
def jobs(draw: Any, *, single_gpu: bool = False, cost_only: bool = False) -> list[JobSpec]:
    n = draw(st.integers(1, 12))
    out = []
    for i in range(n):
        resources: dict[str, Any] = {"gpus": 1 if single_gpu else draw(st.integers(1, 3))}
        if draw(st.booleans()):
            resources["gpu_models"] = draw(
                st.lists(st.sampled_from(MODELS[:3]), min_size=1, max_size=2)
            )
        if draw(st.booleans()):
            resources["vram_gib"] = draw(st.sampled_from([8, 16, 24, 40]))
        placement: dict[str, Any] = {}
        if draw(st.booleans()):
            placement["near"] = near(draw(st.sampled_from(CITIES)))
            if draw(st.booleans()):
                placement["max_latency_ms"] = draw(st.sampled_from([5, 15, 40, 150]))
        if draw(st.booleans()):
            placement["tiers"] = draw(
                st.lists(st.sampled_from(["device", "edge", "regional"]), min_size=1, max_size=2)
            )
        if draw(st.booleans()):
            placement["regions"] = [draw(st.sampled_from(["eu", "us", "eu-central"]))]
        spec: dict[str, Any] = {
            "name": f"j{i}",
            "command": ["true"],
            "resources": resources,
            "placement": placement,
            "replicas": 1 if single_gpu else draw(st.integers(1, 2)),
        }
        if draw(st.booleans()):
            spec["pricing"] = {"max_usd_per_gpu_hour": str(draw(st.sampled_from(PRICES)))}
        if cost_only:
            spec["objective"] = {"cost": 1, "latency": 0, "reliability": 0}
        out.append(JobSpec.model_validate(spec))
    return out


def meets_every_constraint(spec: JobSpec, o: Offer) -> bool:
    res, place = spec.resources, spec.placement
    if o.accelerator != res.accelerator or (res.gpu_models and o.gpu_model not in res.gpu_models):
        return False
    if res.vram_gib is not None and o.vram_gib < res.vram_gib:
        return False
    if (o.gpus_total or 0) < res.gpus or (place.tiers and o.tier not in place.tiers):
        return False
    if place.regions and not any(
        o.region == r or o.region.startswith(r + "-") for r in place.regions
    ):
        return False
    cap = spec.pricing.max_usd_per_gpu_hour
    if cap is not None and o.price_usd_per_gpu_hour > float(cap) + 1e-9:
        return False
    if place.max_latency_ms is not None:
        worst = max(estimate_rtt_ms(p.lat, p.lon, o.lat, o.lon, o.network) for p in place.near)
        return worst <= place.max_latency_ms + 1e-6
    return True


def free_after(result: Any, market: list[Offer]) -> dict[int, int]:
    free = {o.node_id: o.gpus_free if o.available else 0 for o in market}
    for p in result.placements:
        free[p.node_id] -= p.gpus
    return free


# Each property holds on both paths: the class path, and the per-job path (a compiled scan
# per job) that batches of distinct requests take.
PATHS = st.sampled_from([False, True])


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), mode=st.sampled_from(["fast", "optimal"]), per_job=PATHS)
def test_every_placement_meets_every_hard_constraint_on_an_available_node(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    result = plan(batch, market, mode=mode, per_job=per_job)
    by_node = {o.node_id: o for o in market}
    specs = {s.name: s for s in batch}
    for p in result.placements:
        assert meets_every_constraint(specs[p.job], by_node[p.node_id]), p
        assert by_node[p.node_id].available, p


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), mode=st.sampled_from(["fast", "optimal"]), per_job=PATHS)
def test_capacity_is_never_exceeded(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    result = plan(batch, market, mode=mode, per_job=per_job)
    assert all(free >= 0 for free in free_after(result, market).values())


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), mode=st.sampled_from(["fast", "optimal"]), per_job=PATHS)
def test_gangs_and_replicas_are_all_or_none(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    result = plan(batch, market, mode=mode, per_job=per_job)
    specs = {s.name: s for s in batch}
    placed: dict[str, list[Any]] = defaultdict(list)
    for p in result.placements:
        placed[p.job].append(p)
    for name, ps in placed.items():
        spec = specs[name]
        assert len(ps) == spec.replicas, "a job got only some of its replicas"
        assert len({p.node_id for p in ps}) == spec.replicas, "two replicas on one node"
        assert all(p.gpus == spec.resources.gpus for p in ps), "a gang was split"
    assert set(placed) | set(result.unplaced) == set(specs)
    assert not set(placed) & set(result.unplaced)


@PROPERTY_SETTINGS
@given(
    market=offers(),
    batch=jobs(single_gpu=True),
    mode=st.sampled_from(["fast", "optimal"]),
    per_job=PATHS,
)
def test_an_unplaced_job_had_no_feasible_node_with_room_left(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    result = plan(batch, market, mode=mode, per_job=per_job)
    free = free_after(result, market)
    specs = {s.name: s for s in batch}
    for name in result.unplaced:
        spec = specs[name]
        assert not any(
            free[o.node_id] >= spec.resources.gpus and meets_every_constraint(spec, o)
            for o in market
        ), f"{name} was left out while a feasible node had room"


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(single_gpu=True, cost_only=True), per_job=PATHS)
def test_fast_places_as_many_as_optimal_and_optimal_never_costs_more(
    market: list[Offer], batch: list[JobSpec], per_job: bool
) -> None:
    fast = plan(batch, market, mode="fast", per_job=per_job)
    optimal = plan(batch, market, mode="optimal")
    assert len(fast.placements) == len(optimal.placements)
    assert optimal.total_cost_usd_per_hour() <= fast.total_cost_usd_per_hour() + 1e-9


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), per_job=PATHS)
def test_reasons_are_given_for_every_unplaced_job(
    market: list[Offer], batch: list[JobSpec], per_job: bool
) -> None:
    result = plan(batch, market, per_job=per_job)
    for name, status in result.unplaced.items():
        assert status.reasons, name
        metric = result.metrics[name]
        assert metric.nodes_evaluated == len(market)
        assert sum(metric.filtered.values()) + metric.feasible == len(market)


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), mode=st.sampled_from(["fast", "optimal"]), per_job=PATHS)
def test_a_job_left_out_is_never_exactly_when_too_few_nodes_meet_its_constraints(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    result = plan(batch, market, mode=mode, per_job=per_job)
    specs = {s.name: s for s in batch}
    for name, status in result.unplaced.items():
        spec = specs[name]
        fitting = sum(meets_every_constraint(spec, o) for o in market)
        expected = Code.NEVER if fitting < spec.replicas else Code.WAITING
        assert status.code is expected, (name, status)
        assert admit(spec, market).ok == (expected is Code.WAITING)


def arrays_of(snap: Snapshot) -> dict[str, np.ndarray]:
    """Copies of every array the snapshot holds: rows, classes, locations, cells."""
    _ = snap.cell_free_max  # resolve maxima a take left stale, so equal states compare equal
    return {k: v.copy() for k, v in vars(snap).items() if isinstance(v, np.ndarray)}


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), mode=st.sampled_from(MODES), per_job=PATHS)
def test_plan_leaves_a_snapshot_it_is_given_unchanged(
    market: list[Offer], batch: list[JobSpec], mode: str, per_job: bool
) -> None:
    snap = Snapshot(market)
    before = arrays_of(snap)
    plan(batch, snap, mode=mode, per_job=per_job)
    after = arrays_of(snap)
    assert before.keys() == after.keys()
    for name, array in before.items():
        assert np.array_equal(array, after[name]), name


def test_a_dense_contended_market_places_the_same_count_both_ways() -> None:
    market = [
        offer(
            i + 1,
            at=CITIES[i % 3],
            gpu_model="L4",
            gpus_free=1,
            price_usd_per_gpu_hour=0.1 * (i + 1),
        )
        for i in range(6)
    ]
    batch = [
        JobSpec.model_validate(
            {
                "name": f"j{i}",
                "command": ["true"],
                "resources": {"gpus": 1},
                "placement": {"near": near(CITIES[i % 3]), "max_latency_ms": 3 if i % 2 else 200},
                "objective": {"cost": 1, "latency": 0, "reliability": 0},
            }
        )
        for i in range(6)
    ]
    fast, optimal = plan(batch, market, mode="fast"), plan(batch, market, mode="optimal")
    assert Counter(p.node_id for p in fast.placements).total() == len(optimal.placements)
