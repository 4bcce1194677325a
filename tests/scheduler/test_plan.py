"""plan(jobs, offers): every hard constraint holds, scores follow the objective, reasons explain."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import scheduler
from depin.spec import JobSpec
from scheduler import Code, Offer, Snapshot, Status, admit, plan
from scheduler.feasibility import evaluate
from scheduler.flow import COST_SCALE, SCORE_CEILING, unplaced_cost
from scheduler.latency import ACCESS_RTT_MS
from scheduler.request import Request
from scheduler.scoring import CellScores
from tests.factories import BERLIN, PARIS, near, offer


def job(name: str = "j", **kw: Any) -> JobSpec:
    fields: dict[str, Any] = {"name": name, "command": ["true"], "resources": {"gpus": 1}}
    fields.update(kw)
    return JobSpec.model_validate(fields)


def placed_on(result: Any, name: str) -> int:
    return next(p.node_id for p in result.placements if p.job == name)


@pytest.mark.parametrize(
    ("spec_fields", "rejected", "label", "suggestion"),
    [
        (
            {"resources": {"gpus": 1, "vram_gib": 48}},
            offer(1, vram_gib=24),
            "vram_gib >= 48",
            "vram_gib 24",
        ),
        (
            {"resources": {"gpus": 1, "gpu_models": ["L4"]}},
            offer(1),
            "gpu_model in ['L4']",
            "adding 'RTX 4090' to gpu_models",
        ),
        (
            {"resources": {"gpus": 1, "accelerator": "tpu"}},
            offer(1),
            "accelerator = tpu",
            "accelerator gpu",
        ),
        ({"resources": {"gpus": 4}}, offer(1, gpus_free=2), "gpus >= 4", "gpus 2"),
        (
            {"placement": {"tiers": ["regional"]}},
            offer(1),
            "tier in ['regional']",
            "adding 'edge' to tiers",
        ),
        (
            {"placement": {"regions": ["us"]}},
            offer(1),
            "region in ['us']",
            "adding 'eu-central' to regions",
        ),
        (
            {"pricing": {"max_usd_per_gpu_hour": "0.40"}},
            offer(1),
            "price <= 0.4 USD/GPU-h",
            "max_usd_per_gpu_hour 0.5",
        ),
        (
            {"placement": {"near": near(PARIS), "max_latency_ms": 10}},
            offer(1),
            "rtt <= 10 ms",
            "max_latency_ms 16",
        ),
    ],
)
def test_each_hard_constraint_rejects_is_named_and_says_what_would_place_it(
    spec_fields: dict[str, Any], rejected: Offer, label: str, suggestion: str
) -> None:
    result = plan([job(**spec_fields)], [rejected])
    assert result.placements == []
    assert result.metrics["j"].filtered == {label: 1}
    assert result.unplaced["j"] == Status(
        Code.NEVER, (f"{label}: rejected 1 of 1 nodes", f"{suggestion} would reach 1 node")
    )
    assert result.never_fits("j")


def test_a_region_prefix_matches_the_regions_under_it() -> None:
    result = plan([job(placement={"regions": ["eu"]})], [offer(1, region="us-east"), offer(2)])
    assert placed_on(result, "j") == 2


def test_the_latency_budget_holds_from_every_near_point() -> None:
    spec = job(placement={"near": near(BERLIN, PARIS), "max_latency_ms": 12})
    berlin, paris = offer(1), offer(2, at=PARIS)
    assert plan([spec], [berlin, paris]).placements == []  # each city is ~13 ms from the other
    relaxed = job(placement={"near": near(BERLIN, PARIS), "max_latency_ms": 20})
    result = plan([relaxed], [berlin, paris])
    assert result.placements[0].rtt_ms == pytest.approx(2 + 2 * 878 * 1.5 / 200, rel=0.02)


def test_capacity_is_never_exceeded_within_a_batch() -> None:
    jobs = [job(f"j{i}") for i in range(5)]
    result = plan(jobs, [offer(1, gpus_free=2), offer(2, gpus_free=1)])
    assert len(result.placements) == 3
    assert sorted(p.node_id for p in result.placements) == [1, 1, 2]
    assert set(result.unplaced) == {"j3", "j4"}
    assert result.unplaced["j3"].code is Code.WAITING and not result.never_fits("j3")
    assert result.unplaced["j3"].reasons[-1] == (
        "2 nodes fit, all busy (fewer than 1 GPU free); the job waits"
    )


def test_a_multi_gpu_job_takes_all_its_gpus_on_one_node() -> None:
    result = plan([job(resources={"gpus": 3})], [offer(1, gpus_free=2), offer(2, gpus_free=2)])
    assert result.placements == []
    result = plan([job(resources={"gpus": 3})], [offer(1, gpus_free=2), offer(2, gpus_free=4)])
    assert [(p.node_id, p.gpus) for p in result.placements] == [(2, 3)]


def test_busy_nodes_make_a_job_wait_not_fail() -> None:
    result = plan([job(resources={"gpus": 2})], [offer(1, gpus_free=0, gpus_total=2)])
    assert result.unplaced["j"].code is Code.WAITING and not result.never_fits("j")
    assert result.metrics["j"].exhausted == 1


def test_a_cost_only_objective_picks_the_cheapest_node() -> None:
    spec = job(objective={"cost": 1, "latency": 0, "reliability": 0})
    result = plan(
        [spec], [offer(1, price_usd_per_gpu_hour=0.9), offer(2, price_usd_per_gpu_hour=0.3)]
    )
    assert placed_on(result, "j") == 2
    # Cost is linear in price against the dearest node in the market: free = 100, dearest = 0.
    # Candidates keep their figures to two decimals, as the plan record does.
    assert result.metrics["j"].candidates[0].scores["cost"] == pytest.approx(
        100 * (1 - 0.3 / 0.9), abs=0.005
    )
    assert result.metrics["j"].candidates[1].scores["cost"] == pytest.approx(0)


def test_a_latency_objective_picks_the_nearest_node() -> None:
    spec = job(
        placement={"near": near(PARIS)}, objective={"cost": 0, "latency": 1, "reliability": 0}
    )
    far_cheap = offer(1, price_usd_per_gpu_hour=0.1)
    near_dear = offer(2, price_usd_per_gpu_hour=2.0, at=PARIS)
    assert placed_on(plan([spec], [far_cheap, near_dear]), "j") == 2


def test_latency_scores_fall_linearly_to_zero_at_the_budget() -> None:
    spec = job(
        placement={"near": near(PARIS), "max_latency_ms": 40},
        objective={"cost": 0, "latency": 1, "reliability": 0},
    )
    result = plan([spec], [offer(1), offer(2, at=PARIS)])
    close, far = result.metrics["j"].candidates
    assert close.scores["latency"] == pytest.approx(100 * (1 - 2 / 40))
    assert far.scores["latency"] == pytest.approx(100 * (1 - far.rtt_ms / 40))


def test_a_node_in_the_users_city_meets_a_budget_its_access_network_uses_exactly() -> None:
    spec = job(placement={"near": near(PARIS), "max_latency_ms": ACCESS_RTT_MS["wifi"]})
    here = offer(1, at=PARIS, network="wifi")
    assert placed_on(plan([spec], [here]), "j") == 1
    assert admit(spec, [here]).ok


def test_a_batch_scores_its_classes_together_exactly_as_one_by_one() -> None:
    snap = Snapshot(
        [
            offer(1),
            offer(2, at=PARIS, price_usd_per_gpu_hour=1.5),
            offer(3, gpu_model="L4", vram_gib=24.0, reliability=0.9, network="5g"),
        ]
    )
    specs = [
        job(placement={"near": near(PARIS), "max_latency_ms": 40}),
        job(objective={"cost": 1, "latency": 0, "reliability": 2}),  # no users: latency 100
        job(resources={"gpus": 1, "vram_gib": 80}),  # no cell passes
        job(placement={"near": near(BERLIN, PARIS)}, objective={"cost": 0, "latency": 1}),
    ]
    reqs = [Request.of(s) for s in specs]
    feasibilities = [evaluate(r, snap) for r in reqs]
    together = CellScores.of_many(reqs, snap, feasibilities)
    for req, feas, batch_scores in zip(reqs, feasibilities, together, strict=True):
        alone = CellScores.of(req, snap, feas)
        for column in ("cost", "latency", "part", "upper", "lower"):
            assert np.array_equal(getattr(batch_scores, column), getattr(alone, column))
        assert (batch_scores.rtt_ms is None) == (alone.rtt_ms is None) == (not req.has_near)
        if alone.rtt_ms is not None:
            assert np.array_equal(batch_scores.rtt_ms, alone.rtt_ms)
    assert len(together[2].cost) == 0
    assert together[1].latency.tolist() == [100.0] * len(feasibilities[1].cells)


def test_equal_nodes_share_load() -> None:
    result = plan([job("a"), job("b")], [offer(1, gpus_free=2), offer(2, gpus_free=2)])
    assert sorted(p.node_id for p in result.placements) == [1, 2]


@pytest.mark.parametrize("mode", ["fast", "optimal"])
def test_a_crowd_of_identical_nodes_takes_one_job_each_most_reliable_first(mode: str) -> None:
    # One cell of 3,000 nodes that differ only in reliability: handing its slots out
    # must not rescan the cell per job (it once took minutes at fleet scale).
    offers = [offer(n, gpus_free=1, reliability=0.9 + (n % 7) / 100) for n in range(1, 3001)]
    jobs = [
        job(f"j{i}", objective={"cost": 0, "latency": 0, "reliability": 1}) for i in range(2000)
    ]
    result = plan(jobs, offers, mode=mode)
    nodes = [p.node_id for p in result.placements]
    assert len(nodes) == len(set(nodes)) == 2000
    reliability = {o.node_id: o.reliability for o in offers}
    assert min(reliability[n] for n in nodes) >= max(
        r for n, r in reliability.items() if n not in set(nodes)
    )


def test_auto_mode_solves_a_batch_exactly_and_a_single_job_fast() -> None:
    assert plan([job("a"), job("b")], [offer(1)], mode="auto").mode == "optimal"
    assert plan([job("a")], [offer(1)], mode="auto").mode == "fast"


def test_a_reliability_objective_picks_the_most_reliable_node() -> None:
    spec = job(objective={"cost": 0, "latency": 0, "reliability": 1})
    result = plan([spec], [offer(1, reliability=0.9), offer(2, reliability=0.999)])
    assert placed_on(result, "j") == 2


def test_ties_go_to_the_cheaper_then_the_lower_node_id() -> None:
    spec = job(objective={"cost": 0, "latency": 0, "reliability": 1})
    result = plan(
        [spec], [offer(3, price_usd_per_gpu_hour=0.5), offer(2, price_usd_per_gpu_hour=0.5)]
    )
    assert placed_on(result, "j") == 2


def test_keys_name_jobs_whose_names_repeat() -> None:
    result = plan([job("same"), job("same")], [offer(1)], keys=[10, 11])
    assert sorted(p.job for p in result.placements) == [10, 11]


def test_plan_refuses_duplicate_keys_and_unknown_modes() -> None:
    with pytest.raises(ValueError, match="distinct key"):
        plan([job("a"), job("a")], [offer(1)])
    with pytest.raises(ValueError, match="unknown plan mode"):
        plan([job()], [offer(1)], mode="magic")


def test_no_nodes_at_all_is_a_reason_of_its_own() -> None:
    assert plan([job()], []).unplaced["j"] == Status(Code.NEVER, ("no nodes are registered",))


def test_admission_ignores_busy_capacity_but_not_static_constraints() -> None:
    busy = offer(1, gpus_free=0, gpus_total=2)
    admitted = admit(job(), [busy])
    assert admitted.ok and admitted.feasible_node_ids == [1]
    assert admitted.status == Status(Code.WAITING)
    refused = admit(job(resources={"gpus": 1, "vram_gib": 80}), [busy])
    assert not refused.ok
    assert refused.status == Status(
        Code.NEVER, ("vram_gib >= 80: rejected 1 of 1 nodes", "vram_gib 24 would reach 1 node")
    )


def test_the_metric_of_a_job_left_out_records_its_code_and_a_placed_ones_none() -> None:
    result = plan(
        [job("placed"), job("waits"), job("never", resources={"gpus": 1, "vram_gib": 80})],
        [offer(1, gpus_free=1, gpus_total=2)],
    )
    codes = {name: result.metrics[name].to_dict()["code"] for name in result.metrics}
    assert codes == {"placed": None, "waits": "waiting", "never": "never"}


def test_the_scheduler_exports_its_public_names_sorted() -> None:
    assert scheduler.__all__ == sorted(scheduler.__all__)
    assert {"Code", "Status", "plan", "admit", "Plan", "Admission"} <= set(scheduler.__all__)


def test_leaving_a_job_out_costs_more_than_the_longest_chain_of_moves_that_fits_it() -> None:
    """A chain of classes: class 0 fits only cell 1; class i prefers cell i and may move to
    cell i+1 at the dearest cost. Placing everyone moves every class; the flow must still."""
    from ortools.graph.python import min_cost_flow

    classes, dearest = 1_200, round(SCORE_CEILING * COST_SCALE)
    solver = min_cost_flow.SimpleMinCostFlow()
    source, sink = 0, 2 * classes + 1
    costs = []
    cell = [0] + [classes + c for c in range(1, classes + 1)]  # cell[c]: node of cell c
    solver.add_arc_with_capacity_and_unit_cost(source, 1, 1, 0)
    solver.add_arc_with_capacity_and_unit_cost(1, cell[1], 1, 0)
    for i in range(1, classes):
        solver.add_arc_with_capacity_and_unit_cost(source, 1 + i, 1, 0)
        solver.add_arc_with_capacity_and_unit_cost(1 + i, cell[i], 1, 0)
        solver.add_arc_with_capacity_and_unit_cost(1 + i, cell[i + 1], 1, dearest)
        costs.append(dearest)
    for c in range(1, classes + 1):
        solver.add_arc_with_capacity_and_unit_cost(cell[c], sink, 1, 0)
    left_out = solver.add_arc_with_capacity_and_unit_cost(
        source, sink, classes, unplaced_cost(np.array(costs), classes)
    )
    solver.set_nodes_supplies(np.array([source, sink]), np.array([classes, -classes]))
    assert solver.solve() == solver.OPTIMAL
    assert solver.flow(left_out) == 0
