"""The Marketplace: submission, reservation and settlement, each all-or-nothing."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from depin.errors import (
    ExpiredEnvelopeError,
    ForeignAudienceError,
    InsufficientFundsError,
    ReplayError,
    RevokedKeyError,
    TamperedEnvelopeError,
    UnknownKeyError,
    UnschedulableError,
)
from depin.manifest import Envelope
from depin.runtime.work import CycleCommit, Outcome
from scheduler import plan
from tests.factories import BERLIN, World, ended, finish, job


def test_submission_queues_the_job_and_holds_its_most_cost(world: World) -> None:
    before = world.available()
    spec = job(pricing={"max_usd_per_gpu_hour": "1.00"}, max_duration_s=3600, resources={"gpus": 2})
    view = world.client.submit(spec, account=world.developer)
    assert view.state == "pending"
    assert view.max_cost_micro_usd == 2_000_000  # $1.00 x 2 GPUs x 1 h
    assert world.available() == before - 2_000_000
    assert world.client.verify_ledger().ok


def test_without_a_price_cap_the_hold_covers_the_dearest_feasible_node(world: World) -> None:
    view = world.client.submit(job(max_duration_s=3600), account=world.developer)
    assert view.max_cost_micro_usd == 1_200_000  # the A100 at $1.20 is the dearest that fits


def test_the_budget_caps_the_hold(world: World) -> None:
    spec = job(pricing={"budget_usd": "0.25"}, max_duration_s=3600)
    view = world.client.submit(spec, account=world.developer)
    assert view.max_cost_micro_usd == 250_000


def _unchanged(world: World, before_balance: int, before_jobs: int) -> None:
    assert world.available() == before_balance
    assert len(world.client.jobs()) == before_jobs
    assert world.client.verify_ledger().ok


def _tamper(env: Envelope) -> Envelope:
    data = env.to_dict()
    payload = json.loads(base64.b64decode(data["payload"]))
    payload["job"]["resources"]["gpus"] = 8
    data["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return Envelope.from_dict(data)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda w: _tamper(w.sign(job())), TamperedEnvelopeError),
        (lambda w: w.sign(job(), audience="depin-elsewhere"), ForeignAudienceError),
        (lambda w: w.client.sign(job(), key="stranger", account="dev"), UnknownKeyError),
        (lambda w: w.sign(job(resources={"gpus": 1, "vram_gib": 200})), UnschedulableError),
        (
            lambda w: w.sign(job(max_duration_s=7 * 24 * 3600, resources={"gpus": 8})),
            InsufficientFundsError,
        ),
    ],
    ids=["tampered", "foreign-audience", "unregistered-key", "no-node-can-take-it", "over-balance"],
)
def test_a_refused_submission_changes_nothing(world: World, make, error) -> None:  # type: ignore[no-untyped-def]
    world.client.new_key("stranger")
    envelope = make(world)
    before_balance, before_jobs = world.available(), len(world.client.jobs())
    with pytest.raises(error):
        world.client.submit(envelope)
    _unchanged(world, before_balance, before_jobs)


def test_a_replayed_envelope_is_refused(world: World) -> None:
    envelope = world.sign(job())
    world.client.submit(envelope)
    before_balance, before_jobs = world.available(), len(world.client.jobs())
    with pytest.raises(ReplayError, match="already used"):
        world.client.submit(envelope)
    _unchanged(world, before_balance, before_jobs)


def test_an_expired_envelope_is_refused(world: World) -> None:
    envelope = world.sign(job())
    later = datetime.now(UTC) + timedelta(hours=1)
    with pytest.raises(ExpiredEnvelopeError):
        world.client.market.submit(envelope, now=later)


def test_an_envelope_from_a_revoked_key_is_refused(world: World) -> None:
    from sqlalchemy import text

    envelope = world.sign(job())
    with world.client.market.engine.begin() as conn:
        conn.execute(text("UPDATE account_keys SET state = 'revoked'"))
    with pytest.raises(RevokedKeyError):
        world.client.submit(envelope)


def test_a_key_revoked_while_its_envelopes_are_verified_is_refused_at_the_write(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    import depin.market

    envelope = world.sign(job())
    verify = depin.market.admit_envelopes

    def verify_then_revoke(*args: object, **kwargs: object) -> object:
        admitted = verify(*args, **kwargs)  # type: ignore[arg-type]
        world.client.revoke_key(world.developer)  # lands between verification and the write
        return admitted

    monkeypatch.setattr(depin.market, "admit_envelopes", verify_then_revoke)
    with pytest.raises(RevokedKeyError, match="was revoked"):
        world.client.submit(envelope)
    assert world.client.jobs() == []
    assert world.available() == 100_000_000


def test_unschedulable_reasons_name_the_constraint(world: World) -> None:
    spec = job(placement={"near": [{"lat": -33.87, "lon": 151.21}], "max_latency_ms": 15})
    with pytest.raises(UnschedulableError) as err:
        world.client.submit(spec, account=world.developer)
    assert "rtt <= 15 ms: rejected 4 of 4 nodes" in str(err.value)


def cycle(world: World) -> CycleCommit:
    return world.cycle()


def test_a_reservation_takes_capacity_and_shrinks_the_hold(world: World) -> None:
    spec = job(
        placement={"near": [{"lat": BERLIN[0], "lon": BERLIN[1]}], "max_latency_ms": 10},
        resources={"gpus": 2, "gpu_models": ["RTX 4090"]},
        pricing={"max_usd_per_gpu_hour": "1.00"},
        max_duration_s=3600,
    )
    job_id = world.submit(spec)
    commit = cycle(world)
    assert len(commit.reserved) == 1
    view = world.client.job(job_id)
    assert view.state == "scheduled"
    alloc = view.allocation
    assert alloc is not None and alloc.node_id == world.node_ids["berlin-4090"]
    assert alloc.price_micro_usd_per_gpu_hour == 500_000
    nodes = {n.id: n for n in world.client.nodes()}
    assert nodes[alloc.node_id].gpus_free == 0
    assert world.client.account("dev").balance.debits_pending == 1_000_000  # $0.50 x 2 x 1 h
    assert world.client.verify_ledger().ok


def test_settlement_pays_the_provider_for_the_time_used_and_returns_the_rest(world: World) -> None:
    launch = world.claimed()
    job_id = launch.job_id
    market = world.client.market
    finish(market, ended(launch, 90))
    view = world.client.job(job_id)
    expected = 10_000  # $0.40 per GPU-hour x 1 GPU x 90 s = $0.01
    assert view.state == "succeeded" and view.allocation.cost_micro_usd == expected  # type: ignore[union-attr]
    assert world.client.account("acme").balance.credits_posted == expected
    assert world.client.account("dev").balance.debits_pending == 0
    assert world.available() == 100_000_000 - expected
    assert {n.id: n.gpus_free for n in world.client.nodes()}[launch.node_id] == 4
    assert world.client.verify_ledger().ok


def test_finishing_twice_settles_once(world: World) -> None:
    launch = world.claimed()
    market = world.client.market
    outcome = ended(launch, 10, exit_code=1, output="boom")
    finish(market, outcome)
    finish(market, outcome)
    # $0.40 per GPU-hour x 10 s = $0.0011111..., rounded up to a whole micro-dollar
    assert world.client.account("acme").balance.credits_posted == 1_112
    assert world.client.verify_ledger().ok


def test_a_lost_allocation_pays_nothing_and_requeues_the_job(world: World) -> None:
    launch = world.claimed()
    job_id = launch.job_id
    market = world.client.market
    now = datetime.now(UTC)
    market.finish(Outcome(launch.allocation_id, now, now, None, "", "node died", lost=True))
    view = world.client.job(job_id)
    assert view.state == "pending"
    assert view.allocation.state == "lost"  # type: ignore[union-attr]
    assert world.client.account("acme").balance.credits_posted == 0
    assert world.client.account("dev").balance.debits_pending == view.max_cost_micro_usd
    assert world.client.verify_ledger().ok


def test_a_stale_plan_never_books_more_than_a_node_has(world: World) -> None:
    market = world.client.market
    spec = job(resources={"gpus": 2, "gpu_models": ["RTX 4090"]})
    world.submit(spec)
    world.submit(spec.model_copy(update={"name": "second"}))
    work = market.pending_work()
    # Two schedulers planned on the same snapshot; each plan puts a different job on the node.
    first = plan(work.specs[:1], work.offers, keys=work.job_ids[:1])
    second = plan(work.specs[1:], work.offers, keys=work.job_ids[1:])
    assert market.commit_plan(work, first, driver_id="a").reserved
    late = market.commit_plan(work, second, driver_id="b")
    assert late.reserved == [] and late.conflicts == 1
    assert {n.id: n.gpus_free for n in world.client.nodes()}[world.node_ids["berlin-4090"]] == 0
    assert world.client.verify_ledger().ok


def test_a_partly_stale_plan_books_what_is_still_free_job_by_job(world: World) -> None:
    market = world.client.market
    gang = job(resources={"gpus": 2, "gpu_models": ["RTX 4090"]})
    world.submit(gang)
    world.submit(gang.model_copy(update={"name": "rival"}))
    l4 = world.submit(job("l4", resources={"gpus": 1, "gpu_models": ["L4"]}))
    work = market.pending_work()
    rival = plan(work.specs[1:2], work.offers, keys=work.job_ids[1:2])
    stale = plan(work.specs[::2], work.offers, keys=work.job_ids[::2])  # gang and l4
    assert market.commit_plan(work, rival, driver_id="a").reserved
    late = market.commit_plan(work, stale, driver_id="b")
    assert len(late.reserved) == 1 and late.conflicts == 1
    assert world.client.job(l4).state == "scheduled"
    assert world.client.job(work.job_ids[0]).state == "pending"
    assert world.client.verify_ledger().ok


def test_a_plan_made_before_its_job_was_lost_and_requeued_does_not_claim_it(
    world: World,
) -> None:
    market = world.client.market
    job_id = world.submit(job(resources={"gpus": 1, "gpu_models": ["L4"]}))
    stale = market.pending_work()  # read under the submission hold
    cycle(world)  # another scheduler places it; it is lost and queued again, with a new hold
    launch = market.claim_reserved("test-driver")[0]
    now = datetime.now(UTC)
    market.finish(Outcome(launch.allocation_id, now, now, None, "", "node died", lost=True))
    assert world.client.job(job_id).state == "pending"
    late = market.commit_plan(
        stale, plan(stale.specs, stale.offers, keys=stale.job_ids), driver_id="b"
    )
    assert late.reserved == [] and late.conflicts == 1
    assert world.client.verify_ledger().ok
    assert len(cycle(world).reserved) == 1  # a fresh plan places it


def test_a_job_that_no_longer_fits_anywhere_ends_unschedulable_and_is_refunded(
    world: World,
) -> None:
    from sqlalchemy import text

    job_id = world.submit(job(resources={"gpus": 1, "gpu_models": ["L4"]}))
    with world.client.market.engine.begin() as conn:  # the only L4 is now listed as a T4
        conn.execute(text("UPDATE nodes SET gpu_model = 'T4' WHERE gpu_model = 'L4'"))
    commit = cycle(world)
    assert commit.unschedulable == [job_id]
    view = world.client.job(job_id)
    assert view.state == "unschedulable"
    assert view.reasons[0] == "gpu_model in ['L4']: rejected 4 of 4 nodes"
    assert world.available() == 100_000_000
    assert world.client.verify_ledger().ok


def test_explain_shows_the_recorded_decision(world: World) -> None:
    job_id = world.submit(job(resources={"gpus": 1, "vram_gib": 70}))
    pending = world.client.explain(job_id)
    assert pending.source.startswith("planned now")
    cycle(world)
    placed = world.client.explain(job_id)
    assert placed.node_ids == [world.node_ids["frankfurt-a100"]]
    assert placed.metric["filtered"] == {"vram_gib >= 70": 3}
    assert placed.metric["candidates"][0]["node_id"] == world.node_ids["frankfurt-a100"]


def test_replicas_land_on_distinct_nodes_each_with_its_own_hold(world: World) -> None:
    job_id = world.submit(job(replicas=3, max_duration_s=3600))
    assert len(cycle(world).reserved) == 3
    view = world.client.job(job_id)
    assert view.state == "scheduled"
    assert len({a.node_id for a in view.allocations}) == 3
    entries = world.client.ledger_entries(account="dev")
    holds = [e for e in entries if e.pending]
    # The submission hold, adjusted to the first replica's hold; one more per further replica.
    assert [e.kind for e in holds] == ["hold", "adjust", "hold", "hold"]
    assert holds[1].pending_id == holds[0].id
    assert {e.allocation_id for e in holds[1:]} == {a.id for a in view.allocations}
    assert world.client.verify_ledger().ok


def test_a_job_needing_more_distinct_nodes_than_exist_is_refused(world: World) -> None:
    with pytest.raises(UnschedulableError, match="needs 3 distinct nodes; only 1 meet"):
        world.client.submit(
            job(replicas=3, resources={"gpus": 1, "gpu_models": ["L4"]}), account=world.developer
        )


def test_a_multi_replica_job_succeeds_only_when_every_replica_does(world: World) -> None:
    job_id = world.submit(job(replicas=2, resources={"gpus": 1, "vram_gib": 24}))
    cycle(world)
    market = world.client.market
    launches = market.claim_reserved("test-driver")
    finish(market, ended(launches[0], 5))
    assert world.client.job(job_id).state == "running"
    finish(market, ended(launches[1], 5, exit_code=2, output="boom"))
    assert world.client.job(job_id).state == "failed"
    assert world.client.verify_ledger().ok


def test_a_scheduler_keeps_its_snapshot_until_the_fleet_changes(world: World) -> None:
    from decimal import Decimal

    from depin.runtime.loop import Driver
    from tests.factories import node

    driver = Driver(world.client.market, kind="test", launch=False)
    driver.cycle()
    cached = driver._snapshot
    driver.cycle()
    assert driver._snapshot is cached  # nothing changed: only free GPUs were read
    new = world.client.add_node(
        node(name="paris-l4", gpu_model="L4", price_usd_per_gpu_hour=Decimal("0.01"))
    )
    job_id = world.submit(
        job(
            resources={"gpus": 1, "gpu_models": ["L4"]},
            objective={"cost": 1, "latency": 0, "reliability": 0},
        )
    )
    driver.cycle()
    assert driver._snapshot is not cached
    assert world.client.job(job_id).allocation.node_id == new.id  # type: ignore[union-attr]
    driver.stop()


def test_work_without_a_valid_usage_receipt_is_not_paid(world: World) -> None:
    launch = world.claimed()
    job_id = launch.job_id
    market = world.client.market
    honest = ended(launch, 60)
    inflated = json.loads(honest.usage_json)  # type: ignore[arg-type]
    payload = json.loads(base64.b64decode(inflated["payload"]))
    payload["ended_at"] = "2099-01-01T00:00:00+00:00"
    inflated["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    finish(market, replace(honest, usage_json=json.dumps(inflated)))
    view = world.client.job(job_id)
    assert view.state == "succeeded"
    assert view.allocation.cost_micro_usd == 0  # type: ignore[union-attr]
    assert "provider not paid" in view.allocation.error  # type: ignore[union-attr,operator]
    assert world.client.account("acme").balance.credits_posted == 0
    assert world.available() == 100_000_000
    assert world.client.verify_ledger().ok


def test_receipts_are_kept_and_audited_by_ledger_verify(world: World) -> None:
    from sqlalchemy import text

    launch = world.claimed()
    market = world.client.market
    finish(market, ended(launch, 30))
    assert world.client.verify_ledger().ok
    with market.engine.begin() as conn:
        stored = conn.execute(
            text("SELECT envelope_json FROM receipts WHERE kind = 'usage'")
        ).scalar_one()
        forged = json.loads(stored)
        forged["signatures"][0]["sig"] = base64.b64encode(b"\0" * 64).decode()
        conn.execute(
            text("UPDATE receipts SET envelope_json = :e WHERE kind = 'usage'"),
            {"e": json.dumps(forged)},
        )
    report = world.client.verify_ledger()
    assert not report.ok
    assert any(
        f"allocation {launch.allocation_id}" in p and "usage receipt" in p for p in report.problems
    )


def test_a_receipt_for_another_allocation_fails_the_audit(world: World) -> None:
    from sqlalchemy import text

    world.submit(job("a", resources={"gpus": 1, "gpu_models": ["L4"]}))
    world.submit(job("b", resources={"gpus": 1, "gpu_models": ["L4"]}))
    cycle(world)
    market = world.client.market
    first, second = market.claim_reserved("test-driver")
    finish(market, ended(first, 30))
    finish(market, ended(second, 30))
    with market.engine.begin() as conn:
        receipt = conn.execute(
            text("SELECT envelope_json FROM receipts WHERE allocation_id = :a AND kind = 'usage'"),
            {"a": first.allocation_id},
        ).scalar_one()
        conn.execute(
            text(
                "UPDATE receipts SET envelope_json = :e WHERE allocation_id = :a AND kind = 'usage'"
            ),
            {"e": receipt, "a": second.allocation_id},
        )
    report = world.client.verify_ledger()
    assert any(
        f"allocation {second.allocation_id}" in p and "does not match" in p for p in report.problems
    )
