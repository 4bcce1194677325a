"""Idempotent requests, hold timeouts, the ledger export, and reservations left for a launcher."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from depin.db.models import utcnow
from depin.errors import CapacityError, ConflictError, InputError, UnschedulableError
from depin.limits import PENDING_HOLD_TIMEOUT_S
from depin.runtime.loop import Driver
from depin.runtime.work import Outcome
from tests.factories import World, job


@pytest.fixture
def cli_db(database_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The CLI talks to the same database as the test's client."""
    monkeypatch.setenv("DEPIN_DATABASE_URL", database_url)
    return database_url


def test_the_same_idempotency_key_and_request_return_the_first_result(world: World) -> None:
    before = world.available()
    world.client.deposit("dev", "5", idempotency_key="deposit-0001")
    world.client.deposit("dev", "5", idempotency_key="deposit-0001")  # a retry
    assert world.available() == before + 5_000_000
    spec = job()
    envelope = world.sign(spec)
    first = world.client.submit(envelope, idempotency_key="submit-0001")
    again = world.client.submit(envelope, idempotency_key="submit-0001")  # no ReplayError: a retry
    assert again.id == first.id
    assert len(world.client.jobs()) == 1


def test_a_retry_that_signs_the_manifest_again_returns_the_first_job(world: World) -> None:
    spec = job()
    first = world.client.submit(spec, account="dev", idempotency_key="submit-0002")
    again = world.client.submit(spec, account="dev", idempotency_key="submit-0002")  # new nonce
    assert again.id == first.id
    assert len(world.client.jobs()) == 1
    with pytest.raises(ConflictError, match="already used for a different request"):
        world.client.submit(job("other"), account="dev", idempotency_key="submit-0002")


def test_an_empty_idempotency_key_is_refused_not_ignored(world: World) -> None:
    before = world.available()
    with pytest.raises(InputError, match="idempotency key must be"):
        world.client.deposit("dev", "5", idempotency_key="")
    assert world.available() == before


def test_the_same_key_for_another_request_is_refused_and_changes_nothing(world: World) -> None:
    world.client.deposit("dev", "5", idempotency_key="deposit-0002")
    before = world.available()
    with pytest.raises(ConflictError, match="already used for a different request"):
        world.client.deposit("dev", "6", idempotency_key="deposit-0002")
    assert world.available() == before


def test_job_submit_takes_an_idempotency_key(world: World, cli_db: str, tmp_path: Path) -> None:
    path = tmp_path / "job.dsse.json"
    path.write_text(world.sign(job()).to_json())
    args = ["job", "submit", str(path), "--idempotency-key", "cli-submit-1", "--json"]
    first = CliRunner().invoke(cli, args, catch_exceptions=False)
    second = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert json.loads(first.stdout)["id"] == json.loads(second.stdout)["id"]


def test_a_job_never_scheduled_before_its_hold_times_out_is_cancelled_and_refunded(
    world: World,
) -> None:
    before = world.available()
    job_id = world.submit(job(resources={"gpus": 1, "gpu_models": ["A100-80GB"]}))
    assert world.available() < before
    world.client.market.reconcile(now=utcnow() + timedelta(seconds=PENDING_HOLD_TIMEOUT_S + 1))
    view = world.client.job(job_id)
    assert view.state == "cancelled" and "hold timed out" in view.reasons[0]
    assert world.available() == before
    assert world.client.verify_ledger().ok


def test_an_allocation_past_its_time_limit_is_given_up_and_requeued(world: World) -> None:
    job_id = world.submit(job(resources={"gpus": 1, "gpu_models": ["L4"]}, max_duration_s=60))
    driver = Driver(world.client.market, kind="test", launch=False)
    driver.cycle()
    launch = world.client.market.claim_reserved(driver.driver_id)[0]
    world.client.market.driver_heartbeat(driver.driver_id)
    world.client.market.reconcile(now=utcnow() + timedelta(seconds=60 + 3600 + 1))
    view = world.client.job(job_id)
    assert view.state == "pending" and view.allocations[0].state == "lost"
    assert launch.allocation_id == view.allocations[0].id
    assert world.client.verify_ledger().ok
    driver.stop()


@pytest.mark.parametrize("how", ["driver died", "hold timed out"])
def test_a_multi_replica_job_that_loses_its_replicas_fails_refunded_with_no_hold_left(
    world: World, how: str
) -> None:
    before = world.available()
    job_id = world.submit(job(replicas=2, resources={"gpus": 1, "vram_gib": 24}))
    driver = Driver(world.client.market, kind="test", launch=False)
    driver.cycle()
    world.client.market.claim_reserved(driver.driver_id)
    if how == "driver died":
        later = utcnow() + timedelta(minutes=5)  # no heartbeat since: the driver is gone
    else:
        world.client.market.driver_heartbeat(driver.driver_id)
        later = utcnow() + timedelta(seconds=600 + 3600 + 1)
    lost = world.client.market.reconcile(now=later)
    view = world.client.job(job_id)
    assert len(lost) == 2 and [a.state for a in view.allocations] == ["lost", "lost"]
    assert view.state == "failed" and "replicas are all or none" in view.reasons[0]
    assert world.available() == before
    assert world.client.verify_ledger().ok
    driver.stop()


def test_a_multi_replica_job_whose_replica_is_reported_lost_fails_saying_so(world: World) -> None:
    before = world.available()
    job_id = world.submit(job(replicas=2, resources={"gpus": 1, "vram_gib": 24}))
    driver = Driver(world.client.market, kind="test", launch=False)
    driver.cycle()
    now = utcnow()
    for launch in world.client.market.claim_reserved(driver.driver_id):
        world.client.market.finish(
            Outcome(launch.allocation_id, now, now, None, "", "node died", lost=True)
        )
    view = world.client.job(job_id)
    assert view.state == "failed"
    assert view.reasons == ["a replica was lost (node died); replicas are all or none"]
    assert world.available() == before
    assert world.client.verify_ledger().ok
    driver.stop()


def test_the_export_lets_an_auditor_recompute_the_chain(world: World) -> None:
    world.submit(job())
    entries = list(world.client.export_ledger())
    prev = "0" * 64
    fields = (
        "id",
        "debit_account_id",
        "credit_account_id",
        "amount_micro_usd",
        "kind",
        "pending",
        "pending_id",
        "timeout_at",
        "job_id",
        "allocation_id",
    )
    for e in entries:
        head = "|".join(
            "" if e[f] is None else str(int(e[f]) if isinstance(e[f], bool) else e[f])
            for f in fields
        )
        body = f"{head}|{e['created_at']}|{json.dumps(e['memo'], ensure_ascii=False)}"
        assert e["prev_hash"] == prev
        assert hashlib.sha256((prev + body).encode()).hexdigest() == e["hash"]
        prev = e["hash"]
    assert len(entries) == 2


def test_ledger_export_writes_json_lines(world: World, cli_db: str, tmp_path: Path) -> None:
    out = tmp_path / "ledger.jsonl"
    result = CliRunner().invoke(cli, ["ledger", "export", "-o", str(out)], catch_exceptions=False)
    assert result.exit_code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["deposit"]


def test_no_launch_leaves_reservations_for_any_launcher(world: World, cli_db: str) -> None:
    job_id = world.submit(job(resources={"gpus": 1, "gpu_models": ["L4"]}))
    result = CliRunner().invoke(
        cli, ["scheduler", "run", "--once", "--no-launch", "--json"], catch_exceptions=False
    )
    assert json.loads(result.stdout.strip().splitlines()[-1])["placed"] == 1
    view = world.client.job(job_id)
    assert view.state == "scheduled" and view.allocation.state == "reserved"  # type: ignore[union-attr]
    world.client.market.reconcile(now=utcnow() + timedelta(minutes=5))  # nobody's orphan
    assert world.client.job(job_id).state == "scheduled"
    launcher = Driver(world.client.market, kind="launcher", launch=False)
    assert [launch.job_id for launch in world.client.market.claim_reserved(launcher.driver_id)] == [
        job_id
    ]
    launcher.stop()


def test_placing_by_hand_reports_capacity_and_impossibility(world: World) -> None:
    a = world.submit(job("a", resources={"gpus": 2, "gpu_models": ["RTX 4090"]}))
    b = world.submit(job("b", resources={"gpus": 2, "gpu_models": ["RTX 4090"]}))
    node = world.node_ids["berlin-4090"]
    assert len(world.client.place(a, node)) == 1
    with pytest.raises(CapacityError, match=f"node {node} has 0 free GPU"):
        world.client.place(b, node)
    with pytest.raises(UnschedulableError, match="can never run"):
        world.client.place(b, world.node_ids["tokyo-l4"])
    assert world.client.job(b).state == "pending"
    assert world.client.verify_ledger().ok


def test_placing_by_hand_on_an_offline_node_says_so_and_changes_nothing(world: World) -> None:
    from sqlalchemy import text

    job_id = world.submit(job())
    node = world.node_ids["berlin-4090"]
    with world.client.market.engine.begin() as conn:
        conn.execute(text("UPDATE nodes SET status = 'offline' WHERE id = :id"), {"id": node})
    with pytest.raises(CapacityError, match=f"node {node} is offline and takes no new work"):
        world.client.place(job_id, node)
    assert world.client.job(job_id).state == "pending"
    assert world.client.verify_ledger().ok
