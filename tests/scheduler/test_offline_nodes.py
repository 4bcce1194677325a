"""Offline and draining nodes: part of the fleet the planner sees, with no room.

A job whose only fitting nodes are offline waits for them (code ``waiting``),
as it waits for busy ones; it is neither placed there nor refused.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.orm import Session

from depin.db.models import utcnow
from depin.reserve import CycleCommit
from providers import registry
from scheduler import Code, admit, plan
from tests.factories import World, job, offer

L4_JOB = {"resources": {"gpus": 1, "gpu_models": ["L4"]}}


def test_a_job_whose_only_fitting_node_is_offline_waits_and_says_so() -> None:
    result = plan([job(**L4_JOB)], [offer(1), offer(2, gpu_model="L4", available=False)])
    assert result.placements == []
    status = result.unplaced["hello"]
    assert status.code is Code.WAITING and not result.never_fits("hello")
    assert "1 node fits, offline; the job waits" in status.reasons
    metric = result.metrics["hello"]
    assert (metric.feasible, metric.offline, metric.exhausted) == (1, 1, 0)
    assert metric.to_dict()["offline"] == 1 and metric.to_dict()["code"] == "waiting"


def test_busy_and_offline_nodes_are_counted_apart() -> None:
    offers = [
        offer(1, gpu_model="L4", gpus_free=0, gpus_total=2),
        offer(2, gpu_model="L4", available=False),
        offer(3, gpu_model="L4", available=False),
    ]
    status = plan([job(**L4_JOB)], offers).unplaced["hello"]
    assert status.code is Code.WAITING
    assert "3 nodes fit: 1 busy (fewer than 1 GPU free), 2 offline; the job waits" in (
        status.reasons
    )


@pytest.mark.parametrize("mode", ["fast", "optimal"])
def test_an_offline_node_is_never_used_however_much_it_has(mode: str) -> None:
    offers = [offer(1, available=False, gpus_free=2), offer(2, gpus_free=1)]
    result = plan([job(), job("b")], offers, mode=mode)
    assert [(p.job, p.node_id) for p in result.placements] == [("hello", 2)]
    assert "2 nodes fit: 1 busy (fewer than 1 GPU free), 1 offline; the job waits" in (
        result.unplaced["b"].reasons
    )


def test_too_few_nodes_for_the_replicas_is_never_even_with_offline_ones_among_them() -> None:
    spec = job(replicas=3)
    status = plan([spec], [offer(1), offer(2, available=False)]).unplaced["hello"]
    assert status.code is Code.NEVER
    assert status.reasons == (
        "needs 3 distinct nodes; only 2 meet every constraint",
        "2 nodes fit: 1 offline, 1 with room",
    )


def test_admission_accepts_a_job_only_offline_nodes_fit() -> None:
    admission = admit(job(**L4_JOB), [offer(1), offer(2, gpu_model="L4", available=False)])
    assert admission.ok and admission.status.code is Code.WAITING
    assert admission.feasible_node_ids == [2]


# -- through the market: the registry offers offline nodes, and they come back ----------------


def go_silent(world: World, node_id: int) -> None:
    """The node's agent heartbeated an hour ago and then stopped: it goes offline."""
    with Session(world.client.market.engine) as s, s.begin():
        registry.heartbeat(s, node_id, now=utcnow() - timedelta(hours=1))
        assert registry.mark_silent_nodes_offline(s) == [node_id]


def cycle(world: World) -> CycleCommit:
    market = world.client.market
    work = market.pending_work()
    return market.commit_plan(
        work, plan(work.specs, work.offers, keys=work.job_ids), driver_id=None
    )


def test_the_registry_offers_an_offline_node_as_unavailable_with_no_room(world: World) -> None:
    tokyo = world.node_ids["tokyo-l4"]
    go_silent(world, tokyo)
    by_id = {o.node_id: o for o in world.client.market.offers()}
    assert set(by_id) == set(world.node_ids.values())
    assert (by_id[tokyo].available, by_id[tokyo].gpus_free) == (False, 0)
    assert all(o.available for node_id, o in by_id.items() if node_id != tokyo)


def test_a_job_submitted_while_its_node_is_offline_waits_and_runs_when_it_is_back(
    world: World,
) -> None:
    tokyo = world.node_ids["tokyo-l4"]
    go_silent(world, tokyo)
    job_id = world.submit(job(**L4_JOB))  # admitted: the node may come back
    commit = cycle(world)
    assert commit.reserved == [] and commit.unschedulable == []
    view = world.client.job(job_id)
    assert view.state == "pending"
    assert "1 node fits, offline; the job waits" in view.reasons
    explained = world.client.explain(job_id)
    assert explained.metric["code"] == "waiting"
    assert (explained.metric["offline"], explained.metric["exhausted"]) == (1, 0)

    world.client.market.heartbeat(tokyo)
    assert len(cycle(world).reserved) == 1
    assert world.client.job(job_id).state == "scheduled"
    assert world.client.verify_ledger().ok


def test_a_pending_job_whose_node_went_offline_keeps_waiting_with_its_hold(world: World) -> None:
    job_id = world.submit(job(**L4_JOB))
    held = world.available()
    go_silent(world, world.node_ids["tokyo-l4"])
    assert cycle(world).unschedulable == []
    assert world.client.job(job_id).state == "pending"
    assert world.available() == held
