"""The market's side of node agents: heartbeats, work handed out, fenced reports, lost nodes.

An agent's every word is a stranger's: these tests speak for the agent with
the provider's real key and real receipts, against the real market (SQLite and
PostgreSQL), and check what the market does with what it is told.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from depin.errors import ConflictError, ForbiddenError, InputError
from depin.keys import load_private
from depin.limits import MAX_REQUEUES
from depin.market import Marketplace
from depin.receipts import sign_acceptance, sign_usage
from depin.runtime.agentwire import Acceptance, LogChunk, NodeReport, Report, Work
from depin.states import AllocationState, JobState
from tests.factories import World, job

TOKYO_L4 = job(resources={"gpus": 1, "gpu_models": ["L4"]}, max_duration_s=3600)


def market(world: World) -> Marketplace:
    return world.client.market  # type: ignore[no-any-return]


def beat(world: World, node: str, *, gpus: int = 4, running: list[int] | None = None) -> object:
    report = NodeReport(gpus=gpus, interval_s=1.0, simulated=True, running=running or [])
    return market(world).node_heartbeat(world.node_ids[node], report)


def take(world: World, node: str = "tokyo-l4") -> Work:
    """Submit a job only ``node`` fits, plan it, and hand it to the node's agent."""
    beat(world, node)
    world.submit(TOKYO_L4)
    world.cycle()
    reply = market(world).agent_work(world.node_ids[node])
    assert len(reply.work) == 1
    return reply.work[0]


def accept(world: World, work: Work) -> None:
    private = load_private("acme", world.client.settings.keys_dir)
    body = Acceptance(
        fence=work.fence,
        acceptance_json=sign_acceptance(private, work.facts, at=datetime.now(UTC)).to_json(),
    )
    market(world).accept_allocation(work.facts.node_id, work.allocation_id, body)


def report(world: World, work: Work, *, exit_code: int = 0, seconds: float = 2.0) -> Report:
    private = load_private("acme", world.client.settings.keys_dir)
    end = datetime.now(UTC)
    usage = sign_usage(
        private,
        work.facts,
        started_at=end - timedelta(seconds=seconds),
        ended_at=end,
        exit_code=exit_code,
    )
    return Report(fence=work.fence, exit_code=exit_code, usage_json=usage.to_json())


def silence(world: World) -> list[int]:
    """Reconcile as if every agent had been silent past TTL + grace."""
    later = datetime.now(UTC) + timedelta(seconds=3600)
    return market(world).expire_silent_nodes(now=later)


def test_a_heartbeat_marks_the_node_pulled_and_simulated(world: World) -> None:
    beat(world, "tokyo-l4")
    view = world.client.market.node(world.node_ids["tokyo-l4"])
    assert (view.agent, view.simulated, view.status) == ("pull", True, "active")


def test_an_agent_that_leaves_takes_its_node_offline_at_once(world: World) -> None:
    node_id = world.node_ids["tokyo-l4"]
    report = NodeReport(gpus=4, interval_s=1.0, leaving=True)
    assert market(world).node_heartbeat(node_id, report).status == "offline"
    assert world.client.market.node(node_id).status == "offline"
    world.submit(TOKYO_L4)
    assert world.cycle().reserved == []  # nothing is placed on a node whose agent left
    beat(world, "tokyo-l4")  # it comes back
    assert len(world.cycle().reserved) == 1


def test_a_machine_with_fewer_gpus_than_registered_is_refused(world: World) -> None:
    with pytest.raises(ConflictError, match="registered with 4 GPU"):
        beat(world, "tokyo-l4", gpus=2)


def test_work_reserved_on_a_node_is_handed_to_its_agent_with_a_fence(world: World) -> None:
    work = take(world)
    assert len(work.fence) == 32 and work.facts.fence == work.fence
    assert work.command == list(TOKYO_L4.command) and work.network is False


def test_an_accepted_allocation_runs_and_a_report_settles_it(world: World) -> None:
    work = take(world)
    accept(world, work)
    assert world.client.job(work.job_id).state is JobState.RUNNING
    market(world).allocation_log(
        work.facts.node_id, work.allocation_id, LogChunk(fence=work.fence, data="hello\n")
    )
    market(world).report_allocation(work.facts.node_id, work.allocation_id, report(world, work))
    view = world.client.job(work.job_id)
    assert view.state is JobState.SUCCEEDED and view.allocation is not None
    assert view.allocation.cost_micro_usd and view.allocation.cost_micro_usd > 0
    assert list(world.client.logs(work.job_id)) == ["hello\n"]
    assert world.client.verify_ledger().ok


def test_a_report_with_the_wrong_fence_changes_nothing(world: World) -> None:
    work = take(world)
    accept(world, work)
    wrong = report(world, work).model_copy(update={"fence": "0" * 32})
    with pytest.raises(ConflictError, match="fence"):
        market(world).report_allocation(work.facts.node_id, work.allocation_id, wrong)
    assert world.client.job(work.job_id).state is JobState.RUNNING


def test_another_node_cannot_speak_for_an_allocation(world: World) -> None:
    work = take(world)
    with pytest.raises(ForbiddenError):
        market(world).accept_allocation(
            world.node_ids["berlin-4090"],
            work.allocation_id,
            Acceptance(fence=work.fence, acceptance_json="{}"),
        )


def test_an_acceptance_that_does_not_verify_is_refused_and_nothing_runs(world: World) -> None:
    work = take(world)
    with pytest.raises(InputError, match="acceptance receipt"):
        market(world).accept_allocation(
            work.facts.node_id,
            work.allocation_id,
            Acceptance(fence=work.fence, acceptance_json="{}"),
        )
    assert world.client.job(work.job_id).state is JobState.SCHEDULED


def test_a_silent_node_loses_its_allocations_and_the_job_is_queued_again(world: World) -> None:
    work = take(world)
    accept(world, work)
    before = world.client.market.node(work.facts.node_id).reliability
    assert silence(world) == [work.allocation_id]
    view = world.client.job(work.job_id)
    assert view.state is JobState.PENDING
    assert view.allocation is not None and view.allocation.state is AllocationState.LOST
    node = world.client.market.node(work.facts.node_id)
    assert node.status == "offline" and node.gpus_free == node.gpus
    assert node.reliability < before  # a loss is learned
    assert world.client.verify_ledger().ok


def test_a_report_after_the_allocation_was_lost_is_kept_but_not_paid(world: World) -> None:
    work = take(world)
    accept(world, work)
    silence(world)
    market(world).report_allocation(work.facts.node_id, work.allocation_id, report(world, work))
    alloc = world.client.job(work.job_id).allocations[0]
    assert alloc.state is AllocationState.LOST and not alloc.cost_micro_usd
    assert alloc.dispute is not None and "not paid" in alloc.dispute
    payouts = [e for e in world.client.ledger_entries(limit=1000) if e.kind == "payout"]
    assert payouts == []
    assert world.client.verify_ledger().ok


def test_an_agent_that_comes_back_is_told_to_stop_what_the_market_moved(world: World) -> None:
    work = take(world)
    accept(world, work)
    silence(world)
    reply = beat(world, "tokyo-l4", running=[work.allocation_id])
    assert reply.stop == [work.allocation_id]  # type: ignore[attr-defined]
    assert world.client.market.node(work.facts.node_id).status == "active"


def test_an_allocation_reserved_on_the_node_is_not_named_to_stop(world: World) -> None:
    work = take(world)  # handed out, its acceptance not yet sent
    assert beat(world, "tokyo-l4", running=[work.allocation_id]).stop == []  # type: ignore[attr-defined]


def test_a_job_lost_more_than_the_retry_bound_fails_refunded(world: World) -> None:
    job_id = None
    for attempt in range(MAX_REQUEUES + 1):
        if attempt:
            market_ = market(world)
            with market_.sessions() as s, s.begin():  # the backoff waited out
                from depin.db.models import Job

                s.get(Job, job_id).not_before = None  # type: ignore[union-attr]
            beat(world, "tokyo-l4")
            world.cycle()
            work = market(world).agent_work(world.node_ids["tokyo-l4"]).work[0]
        else:
            work = take(world)
        job_id = work.job_id
        accept(world, work)
        silence(world)
    view = world.client.job(job_id)  # type: ignore[arg-type]
    assert view.state is JobState.FAILED
    assert any(f"at most {MAX_REQUEUES} retries" in r for r in view.reasons)
    assert world.available() == 100_000_000
    assert world.client.verify_ledger().ok


def test_a_cancelled_running_job_is_named_to_its_agent_and_paid_for_its_time(
    world: World,
) -> None:
    work = take(world)
    accept(world, work)
    world.client.cancel(work.job_id)
    assert market(world).agent_work(work.facts.node_id).stop == [work.allocation_id]
    control = market(world).allocation_log(
        work.facts.node_id, work.allocation_id, LogChunk(fence=work.fence, data="x")
    )
    assert control.stop
    market(world).report_allocation(
        work.facts.node_id, work.allocation_id, report(world, work, exit_code=-9, seconds=0.5)
    )
    view = world.client.job(work.job_id)
    assert view.state is JobState.CANCELLED
    assert view.allocation is not None and (view.allocation.cost_micro_usd or 0) > 0
    assert world.client.verify_ledger().ok


def test_an_agent_that_restarted_and_no_longer_lists_a_run_loses_it(world: World) -> None:
    work = take(world)
    accept(world, work)
    beat(world, "tokyo-l4")  # its acceptance may still be on its way: not yet counted
    assert world.client.job(work.job_id).state is JobState.RUNNING
    beat(world, "tokyo-l4")  # accepted before the previous beat, and still not listed
    view = world.client.job(work.job_id)
    assert view.state is JobState.PENDING and view.allocations[0].state is AllocationState.LOST
    assert world.client.verify_ledger().ok


def test_an_acceptance_sent_again_is_taken_once(world: World) -> None:
    work = take(world)
    accept(world, work)
    accept(world, work)  # the first answer was lost: the retry succeeds, nothing changes
    assert world.client.job(work.job_id).state is JobState.RUNNING
    assert world.client.verify_ledger().ok


def test_an_offline_node_cannot_take_work(world: World) -> None:
    work = take(world)
    market(world).node_heartbeat(
        work.facts.node_id, NodeReport(gpus=4, interval_s=1.0, leaving=True)
    )
    with pytest.raises(ConflictError):
        accept(world, work)


def test_an_agent_that_leaves_gives_back_what_was_reserved_for_it(world: World) -> None:
    work = take(world)
    market(world).node_heartbeat(
        work.facts.node_id, NodeReport(gpus=4, interval_s=1.0, leaving=True)
    )
    view = world.client.job(work.job_id)
    assert view.state is JobState.PENDING and view.allocations[0].state is AllocationState.LOST
    assert world.client.verify_ledger().ok


def test_a_run_on_a_node_that_left_and_never_reported_is_lost_after_the_ttl(
    world: World,
) -> None:
    work = take(world)
    accept(world, work)
    market(world).node_heartbeat(
        work.facts.node_id,
        NodeReport(gpus=4, interval_s=1.0, leaving=True, running=[work.allocation_id]),
    )
    assert silence(world) == [work.allocation_id]  # its agent crashed before reporting
    assert world.client.job(work.job_id).state is JobState.PENDING


def test_a_heartbeat_naming_an_id_no_database_holds_is_refused_as_input() -> None:
    with pytest.raises(ValidationError):
        NodeReport(gpus=1, interval_s=1.0, running=[2**64])
    with pytest.raises(ValidationError):
        NodeReport(gpus=1, interval_s=5e-324)


def test_a_cancelled_run_is_paid_only_until_its_node_had_time_to_stop_it(world: World) -> None:
    """Claimed 3000 s ago, cancelled 10 s after that; the receipt claims all 3000 s."""
    from depin.db.models import Allocation, Job
    from depin.limits import CANCEL_STOP_S, RECEIPT_CLOCK_SKEW_S
    from depin.money import usage_cost_micro

    work = take(world)
    accept(world, work)
    world.client.cancel(work.job_id)
    now = datetime.now(UTC)
    with market(world).sessions() as s, s.begin():
        s.get(Allocation, work.allocation_id).claimed_at = now - timedelta(seconds=3000)  # type: ignore[union-attr]
        s.get(Job, work.job_id).cancel_requested_at = now - timedelta(seconds=2990)  # type: ignore[union-attr]
    market(world).report_allocation(
        work.facts.node_id, work.allocation_id, report(world, work, exit_code=-9, seconds=3000)
    )
    alloc = world.client.job(work.job_id).allocations[0]
    most_s = 10 + CANCEL_STOP_S + 2 * RECEIPT_CLOCK_SKEW_S
    assert (
        0
        < (alloc.cost_micro_usd or 0)
        <= usage_cost_micro(alloc.price_micro_usd_per_gpu_hour, alloc.gpus, most_s * 1000)
    )
    assert alloc.dispute is not None  # the receipt claimed more than was paid
    assert world.client.verify_ledger().ok


def test_a_flood_of_heartbeats_does_not_buy_back_an_outage(world: World) -> None:
    node_id = world.node_ids["tokyo-l4"]
    fast = NodeReport(gpus=4, interval_s=0.1)
    start = datetime.now(UTC)
    market(world).node_heartbeat(node_id, fast)
    after_outage = (
        market(world).node_heartbeat(node_id, fast, now=start + timedelta(hours=48)).reliability
    )
    for i in range(300):  # as fast as the agent likes, within a few seconds
        reply = market(world).node_heartbeat(
            node_id, fast, now=start + timedelta(hours=48, milliseconds=10 * (i + 1))
        )
    assert reply.reliability == after_outage < 0.5
