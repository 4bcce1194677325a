"""The per-job path (``scheduler.sparse``): batches where every job is its own request.

Its scan is compiled and takes shortcuts (whole blocks of one kind, price
prefixes, a bound on what could still rank), so it is held to the class path
and to the scalar haversine oracle of ``test_properties``.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from depin.bench.scheduler import offers_of
from depin.bench.workload import distinct_jobs, synthetic_jobs
from depin.spec import JobSpec
from providers.fleet import synthetic_nodes
from scheduler import Offer, Snapshot, admit, plan
from tests.scheduler.test_properties import (
    PROPERTY_SETTINGS,
    free_after,
    jobs,
    meets_every_constraint,
    offers,
)


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs(), pick=st.integers(0, 11))
def test_one_job_goes_where_the_class_path_sends_it_with_the_same_score(
    market: list[Offer], batch: list[JobSpec], pick: int
) -> None:
    job = batch[pick % len(batch)]
    by_class = plan([job], market, per_job=False)
    by_job = plan([job], market, per_job=True)
    assert [(p.node_id, p.gpus) for p in by_job.placements] == [
        (p.node_id, p.gpus) for p in by_class.placements
    ]
    # The two paths take the dot product of unit vectors in different orders of operations;
    # near 1 (a user beside the node) arccos magnifies that last bit to ~1e-7 of a point.
    for a, b in zip(by_job.placements, by_class.placements, strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-5)
        assert (a.rtt_ms is None) == (b.rtt_ms is None)
        if a.rtt_ms is not None:
            assert a.rtt_ms == pytest.approx(b.rtt_ms, abs=1e-5)
    ours, theirs = by_job.metrics[job.name], by_class.metrics[job.name]
    assert ours.feasible == theirs.feasible
    # Latency runs first here (it rejects whole places at once), so the first rejection of
    # a node may be named differently; every node is accounted for either way.
    assert sum(ours.filtered.values()) == sum(theirs.filtered.values())
    if job.name in by_job.unplaced:
        assert by_job.unplaced[job.name].code is by_class.unplaced[job.name].code


@PROPERTY_SETTINGS
@given(market=offers(), batch=jobs())
def test_the_scan_misses_no_feasible_node_and_counts_every_other(
    market: list[Offer], batch: list[JobSpec]
) -> None:
    result = plan(batch, market, per_job=True)
    for spec in batch:
        metric = result.metrics[spec.name]
        fitting = sum(meets_every_constraint(spec, o) for o in market)
        assert metric.feasible == fitting, spec
        assert metric.nodes_evaluated == len(market)
        assert sum(metric.filtered.values()) == len(market) - fitting


@pytest.fixture(scope="module")
def distinct_market() -> tuple[list[Offer], list[JobSpec]]:
    market = offers_of(synthetic_nodes(400, seed=3, distinct_prices=True))
    snap = Snapshot(market)
    batch = [j for j in distinct_jobs(900, seed=4) if admit(j, snap).ok]
    return market, batch


def test_a_batch_of_distinct_requests_takes_the_per_job_path_and_counts_its_work(
    distinct_market: tuple[list[Offer], list[JobSpec]],
) -> None:
    market, batch = distinct_market
    result = plan(batch, market)
    work = result.work
    assert work["jobs"] == len(batch)
    assert work["pairs_decided"] == len(batch) * len(market)
    # It looks at far fewer nodes one by one than it decides on.
    assert 0 < work["nodes_scored"] < work["pairs_feasible"] < work["pairs_decided"]
    assert work["block_checks"] > 0 and work["location_checks"] > 0


def test_a_batch_from_templates_keeps_the_class_path() -> None:
    # 3000 jobs from 6 templates near 300 cities share under a thousand request classes.
    market = offers_of(synthetic_nodes(400, seed=3))
    result = plan(synthetic_jobs(3000, seed=5), market, keys=list(range(3000)))
    assert result.work == {}


def test_on_the_distinct_workload_every_placement_is_feasible_and_no_job_waits_beside_room(
    distinct_market: tuple[list[Offer], list[JobSpec]],
) -> None:
    market, batch = distinct_market
    result = plan(batch, market, keys=list(range(len(batch))))
    by_node = {o.node_id: o for o in market}
    for p in result.placements:
        assert meets_every_constraint(batch[p.job], by_node[p.node_id]), p
    free = free_after(result, market)
    assert all(f >= 0 for f in free.values())
    for key in result.unplaced:
        spec = batch[key]
        assert not any(
            free[o.node_id] >= spec.resources.gpus and meets_every_constraint(spec, o)
            for o in market
        ), f"job {key} was left out while a feasible node had room"
    assert result.placements, "the market has room for some of them"


def test_the_per_job_path_places_as_many_as_the_class_path_on_distinct_jobs(
    distinct_market: tuple[list[Offer], list[JobSpec]],
) -> None:
    market, batch = distinct_market
    keys = list(range(len(batch)))
    per_job = plan(batch, market, keys=keys, per_job=True)
    by_class = plan(batch, market, keys=keys, per_job=False)
    assert len(per_job.placements) >= len(by_class.placements)


def test_for_jobs_of_one_gpu_size_the_optimal_per_job_plan_places_as_many_as_the_exact_flow() -> (
    None
):
    # 1-GPU jobs only: the class path's optimal mode is a min-cost flow, exact for this case.
    market = offers_of(synthetic_nodes(150, seed=8, distinct_prices=True))
    snap = Snapshot(market)
    batch = [j for j in distinct_jobs(700, seed=9, single_gpu=True) if admit(j, snap).ok]
    keys = list(range(len(batch)))
    exact = plan(batch, market, keys=keys, mode="optimal", per_job=False)
    greedy = plan(batch, market, keys=keys, mode="fast", per_job=True)
    flowed = plan(batch, market, keys=keys, mode="optimal", per_job=True)
    assert flowed.mode == "optimal" and flowed.work["placed_by_flow"] > 0
    assert len(flowed.placements) == len(exact.placements) >= len(greedy.placements)
    assert len(flowed.placements) < len(batch), "the market is contended"
    # As many, and then the best total: no worse than the class path's flow (whose cells
    # score a kind of node at a place as one, and whose spread term is read before booking).
    ours, theirs = (sum(p.score for p in r.placements) for r in (flowed, exact))
    assert ours >= theirs * (1 - 1e-3)
    for p in flowed.placements:
        assert meets_every_constraint(
            batch[p.job], next(o for o in market if o.node_id == p.node_id)
        )
    assert all(f >= 0 for f in free_after(flowed, market).values())
