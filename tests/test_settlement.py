"""Settlement: a provider is paid what its receipt attests within what the market saw, and no
receipt or outcome a stranger sends can stop the loop that settles them."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depin.manifest import Envelope, Signature, pae
from depin.runtime.work import Launch, Outcome
from depin.states import AllocationState, JobState
from tests.factories import World, ended

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
L4 = {"gpus": 1, "gpu_models": ["L4"]}  # Tokyo's L4 at $0.40 per GPU-hour


def _allocation(world: World, job_id: int | None = None) -> Any:
    views = world.client.jobs(limit=1) if job_id is None else [world.client.job(job_id)]
    return views[0].allocation


def test_a_receipt_within_what_the_market_saw_is_paid_in_full(world: World) -> None:
    launch = world.claimed(at=T0)
    world.client.market.finish(ended(launch, 90, start=T0), now=T0 + timedelta(seconds=90))
    alloc = _allocation(world)
    assert alloc.cost_micro_usd == 10_000  # $0.40 per GPU-hour x 90 s = $0.01
    assert alloc.dispute is None
    assert world.client.verify_ledger().ok


def test_a_provider_is_not_paid_for_time_it_claims_but_the_market_did_not_see(
    world: World,
) -> None:
    launch = world.claimed(at=T0)
    # A one-second run whose receipt claims ten minutes: the market saw the outcome at T0 + 1 s.
    world.client.market.finish(ended(launch, 600, start=T0), now=T0 + timedelta(seconds=1))
    alloc = _allocation(world)
    # Paid from the claim to the outcome plus the 5 s skew allowance: 6 s at $0.40/GPU-h is
    # $0.000666..., rounded up to 667 micro-USD (the receipt's ten minutes would be 66,667).
    assert alloc.cost_micro_usd == 667
    assert alloc.dispute is not None and "claims 600.000 s" in alloc.dispute
    assert "paid the overlap, 6.000 s" in alloc.dispute
    assert world.client.account("acme").balance.credits_posted == 667
    assert world.client.verify_ledger().ok


def test_a_receipt_that_starts_before_the_claim_is_paid_from_the_claim(world: World) -> None:
    launch = world.claimed(at=T0)
    early = T0 - timedelta(hours=1)
    world.client.market.finish(ended(launch, 3610, start=early), now=T0 + timedelta(seconds=10))
    alloc = _allocation(world)
    # From T0 - 5 s (the skew allowance) to T0 + 10 s: 15 s at $0.40/GPU-h = 1,667 micro-USD.
    assert alloc.cost_micro_usd == 1_667
    assert alloc.started_at == (T0 - timedelta(seconds=5)).isoformat()
    assert world.client.verify_ledger().ok


def test_a_receipt_wholly_outside_what_the_market_saw_pays_nothing(world: World) -> None:
    launch = world.claimed(at=T0)
    last_year = T0 - timedelta(days=365)
    world.client.market.finish(ended(launch, 60, start=last_year), now=T0 + timedelta(seconds=60))
    alloc = _allocation(world)
    assert alloc.cost_micro_usd == 0 and alloc.dispute is not None
    assert world.client.account("acme").balance.credits_posted == 0
    assert world.client.verify_ledger().ok


def test_ledger_verify_flags_a_payment_above_what_the_receipt_attests_in_the_window(
    world: World,
) -> None:
    from sqlalchemy import text

    launch = world.claimed(at=T0)
    world.client.market.finish(ended(launch, 600, start=T0), now=T0 + timedelta(seconds=1))
    with world.client.market.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE allocations SET cost_micro_usd = 66667"))
    problems = world.client.verify_ledger().problems
    assert any("more than its usage receipt attests" in p for p in problems), problems


# -- what strangers send -------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
USAGE_FIELDS = ("started_at", "ended_at", "gpu_seconds", "exit_code", "allocation_id", "gpus")


def _signed_usage(launch: Launch, payload: object) -> str:
    """A usage envelope over ``payload`` (NaN and all), signed by the provider's own key."""
    from depin.keys import key_id

    signer = launch.receipts
    assert signer is not None
    private = signer.private_key()
    assert private is not None
    body = json.dumps(payload, sort_keys=True).encode()
    kind = "application/vnd.depin.usage+json; version=1"
    sig = private.sign(pae(kind, body))
    return Envelope(body, kind, (Signature(key_id(private.public_key()), sig),)).to_json()


HOSTILITY = st.fixed_dictionaries(
    {
        "seconds": st.floats(0, 7200),
        "how": st.sampled_from(["payload", "field", "drop", "fields", "raw"]),
        "payload": JSON,
        "field": st.sampled_from(USAGE_FIELDS),
        "value": JSON,
        "extra": st.dictionaries(st.text(max_size=12), JSON, max_size=3),
        "raw": st.none() | st.text(max_size=200),
        "exit_code": st.none() | st.integers() | st.booleans(),
        "output": st.text(max_size=100),
        "error": st.none() | st.text(max_size=100),
        "started_at": st.datetimes(),  # naive, as a careless node would send
    }
)


def _hostile(launch: Launch, h: dict[str, Any]) -> Outcome:
    """An honest outcome with its receipt or its own fields replaced by anything at all."""
    honest = ended(launch, h["seconds"], start=T0)
    claims = json.loads(base64.b64decode(json.loads(honest.usage_json or "")["payload"]))
    usage = {
        "payload": lambda: _signed_usage(launch, h["payload"]),
        "field": lambda: _signed_usage(launch, claims | {h["field"]: h["value"]}),
        "drop": lambda: _signed_usage(launch, {k: v for k, v in claims.items() if k != h["field"]}),
        "fields": lambda: _signed_usage(launch, claims | h["extra"]),
        "raw": lambda: h["raw"],
    }[h["how"]]()
    return replace(
        honest,
        usage_json=usage,
        exit_code=h["exit_code"],
        output_tail=h["output"],
        error=h["error"],
        started_at=h["started_at"],
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(hostility=HOSTILITY)
def test_no_receipt_or_outcome_a_node_sends_stops_settlement(
    world: World, hostility: dict[str, Any]
) -> None:
    launch = world.claimed(at=T0)
    world.client.market.finish(_hostile(launch, hostility), now=T0 + timedelta(seconds=60))
    view = world.client.job(launch.job_id)
    alloc = view.allocations[-1]
    assert view.state in (JobState.SUCCEEDED, JobState.FAILED)
    assert alloc.state in (AllocationState.SUCCEEDED, AllocationState.FAILED)
    # Never more than the run the market saw (65 s with the skew, at $0.40/GPU-h: 7,223).
    assert (alloc.cost_micro_usd or 0) <= 7_223
    assert {n.id: n.gpus_free for n in world.client.nodes()}[launch.node_id] == 4
    assert world.client.verify_ledger().ok


def test_a_lost_outcome_with_a_stranger_error_requeues_the_job(world: World) -> None:
    launch = world.claimed(at=T0)
    lost = Outcome(launch.allocation_id, T0, T0, None, "", {"not": "text"}, lost=True)  # type: ignore[arg-type]
    world.client.market.finish(lost, now=T0)
    view = world.client.job(launch.job_id)
    assert view.state == JobState.PENDING
    assert view.allocations[-1].state == AllocationState.LOST
    assert view.allocations[-1].error == "node lost"
    assert world.client.verify_ledger().ok


def test_output_with_nul_bytes_and_lone_surrogates_is_stored(world: World) -> None:
    launch = world.claimed(at=T0)
    outcome = replace(ended(launch, 10, start=T0), output_tail="a\x00b\ud800c", error="e\x00")
    world.client.market.finish(outcome, now=T0 + timedelta(seconds=10))
    alloc = world.client.job(launch.job_id).allocations[-1]
    assert alloc.output_tail == "a\ufffdb?c" and alloc.error == "e\ufffd"
    assert alloc.cost_micro_usd == 1_112  # $0.40/GPU-h x 10 s, rounded up


def test_a_cancelled_run_is_paid_for_its_time_and_audited_like_any_other(world: World) -> None:
    from sqlalchemy import text

    launch = world.claimed(at=T0)
    world.client.cancel(launch.job_id)  # running: its drivers stop it, then it is settled
    with world.client.market.engine.begin() as conn:  # type: ignore[attr-defined]
        cancelled_at = T0 + timedelta(seconds=8)  # in the run's own time
        conn.execute(
            text("UPDATE jobs SET cancel_requested_at = :at WHERE id = :id"),
            {
                "at": cancelled_at.replace(tzinfo=None)
                if world.client.settings.is_sqlite
                else cancelled_at,
                "id": launch.job_id,
            },
        )
    world.client.market.finish(ended(launch, 10, start=T0), now=T0 + timedelta(seconds=10))
    view = world.client.job(launch.job_id)
    assert view.state == JobState.CANCELLED
    assert view.allocations[-1].state == AllocationState.CANCELLED
    assert view.allocations[-1].cost_micro_usd == 1_112  # $0.40/GPU-h x 10 s, rounded up
    assert world.client.verify_ledger().ok
    with world.client.market.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE allocations SET cost_micro_usd = 1000000"))
    problems = world.client.verify_ledger().problems
    assert any("more than its usage receipt attests" in p for p in problems), problems


def test_receipts_that_are_not_text_settle_unpaid(world: World) -> None:
    launch = world.claimed(at=T0)
    outcome = replace(ended(launch, 10, start=T0), usage_json=12345, acceptance_json=["x"])  # type: ignore[arg-type]
    world.client.market.finish(outcome, now=T0 + timedelta(seconds=10))  # must not raise
    alloc = world.client.job(launch.job_id).allocations[-1]
    assert alloc.cost_micro_usd == 0 and "provider not paid" in (alloc.error or "")
    assert world.client.verify_ledger().ok


def test_a_receipt_signed_by_an_expired_provider_key_is_not_paid(world: World) -> None:
    from sqlalchemy import text

    launch = world.claimed(at=T0)
    outcome = ended(launch, 10, start=T0)
    with world.client.market.engine.begin() as conn:  # type: ignore[attr-defined]
        conn.execute(text("UPDATE account_keys SET not_after = :t"), {"t": T0 - timedelta(days=1)})
    world.client.market.finish(outcome, now=T0 + timedelta(seconds=10))
    alloc = world.client.job(launch.job_id).allocations[-1]
    assert alloc.cost_micro_usd == 0 and "provider not paid" in (alloc.error or "")
