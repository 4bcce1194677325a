"""The driver: it heartbeats for as long as it lives and reconciles the market on a timer."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from depin.db.models import Driver as DriverRow
from depin.db.models import Job, Transfer
from depin.errors import DatabaseError
from depin.runtime.loop import CycleReport, Driver
from depin.runtime.process import STOPPED
from depin.runtime.work import Outcome
from depin.states import JobState
from tests.factories import World, ended, job


def _heartbeat_at(world: World, driver_id: str) -> datetime:
    with world.client.market.sessions() as s:  # type: ignore[attr-defined]
        return s.execute(
            select(DriverRow.heartbeat_at).where(DriverRow.id == driver_id)
        ).scalar_one()


def _expire_hold(world: World, job_id: int) -> None:
    past = datetime.now(UTC) - timedelta(seconds=1)
    with world.client.market.sessions.begin() as s:  # type: ignore[attr-defined]
        hold_id = s.execute(select(Job.hold_transfer_id).where(Job.id == job_id)).scalar_one()
        s.execute(update(Transfer).where(Transfer.id == hold_id).values(timeout_at=past))


def test_a_long_lived_driver_reconciles_on_a_timer(world: World) -> None:
    # A driver that schedules nothing itself (no job ids), so only reconciliation acts.
    driver = Driver(world.client.market, kind="test", job_ids=[], reconcile_interval_s=0.1)
    try:
        driver.reconcile_if_due()  # the pass a driver makes when it starts
        job_id = world.submit(job())
        _expire_hold(world, job_id)  # its hold times out while the driver runs
        driver.run(until=lambda: world.client.job(job_id).state == JobState.CANCELLED, timeout_s=10)
        view = world.client.job(job_id)
        assert view.state == JobState.CANCELLED
        assert "hold timed out" in view.reasons[0]
        assert world.available() == 100_000_000
    finally:
        driver.stop()


def test_reconciliation_waits_for_its_interval(world: World) -> None:
    driver = Driver(world.client.market, kind="test", job_ids=[], reconcile_interval_s=3600)
    try:
        driver.reconcile_if_due()
        job_id = world.submit(job())
        _expire_hold(world, job_id)
        driver.run(until=lambda: False, timeout_s=0.5)
        assert world.client.job(job_id).state == JobState.PENDING
    finally:
        driver.stop()


@pytest.mark.ray
def test_run_once_heartbeats_while_it_waits_for_its_jobs(
    ray_session: None, sqlite_world: World
) -> None:
    world = sqlite_world
    command = ["python", "-c", "import time; time.sleep(2)"]
    job_id = world.submit(job(command=command, resources={"gpus": 1, "gpu_models": ["L4"]}))
    driver = Driver(world.client.market, kind="scheduler", heartbeat_interval_s=0.2)
    beats: list[datetime] = []

    def seen(report: CycleReport) -> None:
        beats.append(_heartbeat_at(world, driver.driver_id))

    try:
        driver.run_once(on_report=seen)
    finally:
        driver.stop()
    assert world.client.job(job_id).state == JobState.SUCCEEDED
    # Alive the whole time it waited: a peer never takes its running job for dead.
    assert beats[-1] - beats[0] >= timedelta(seconds=1)


class _OneOutcome:
    """An executor that reports one outcome once (the Ray side is not what is tested)."""

    running = 0

    def __init__(self, outcome: Outcome) -> None:
        self._pending = [outcome]

    def poll(self, timeout_s: float = 0.0) -> list[Outcome]:
        out, self._pending = self._pending, []
        return out

    def abandon(self) -> list[Outcome]:
        return []

    def shutdown(self) -> None:
        pass


class _DatabaseAwayOnce:
    """The real market, whose database is away for the first settlement."""

    def __init__(self, market: object) -> None:
        self._market, self._away = market, True

    def __getattr__(self, name: str) -> object:
        return getattr(self._market, name)

    def finish(self, outcome: Outcome) -> None:
        if self._away:
            self._away = False
            raise DatabaseError("database error: unable to open database file")
        self._market.finish(outcome, now=outcome.ended_at)  # type: ignore[attr-defined]


def test_an_outcome_a_database_outage_kept_from_settling_is_settled_next_time(
    world: World,
) -> None:
    launch = world.claimed()
    outcome = ended(launch, 10)
    market = _DatabaseAwayOnce(world.client.market)
    driver = Driver(market, executor=_OneOutcome(outcome), job_ids=[], launch=False)  # type: ignore[arg-type]
    try:
        first = driver.settle()
        assert first.finished == [] and "kept" in first.errors[0]
        second = driver.settle()
        assert second.finished == [outcome]
        assert world.client.job(launch.job_id).state == JobState.SUCCEEDED
    finally:
        driver.stop()


@pytest.mark.ray
def test_a_running_job_its_owner_cancels_is_stopped_and_paid_for_the_time_it_ran(
    ray_session: None, sqlite_world: World
) -> None:
    world = sqlite_world
    command = ["python", "-c", "import time; print('started', flush=True); time.sleep(120)"]
    job_id = world.submit(job(command=command, resources={"gpus": 1, "gpu_models": ["L4"]}))
    driver = Driver(world.client.market, kind="scheduler")
    try:
        assert driver.cycle().launched
        time.sleep(2)  # it runs
        assert world.client.cancel(job_id).state == JobState.RUNNING  # the node must stop it
        driver.run(until=lambda: world.client.job(job_id).state.terminal, timeout_s=60)
    finally:
        driver.stop()
    view = world.client.job(job_id)
    assert view.state == JobState.CANCELLED
    alloc = view.allocation
    assert alloc is not None and alloc.error == STOPPED and "started" in alloc.output_tail
    assert alloc.ended_at is not None and alloc.started_at is not None
    ran = datetime.fromisoformat(alloc.ended_at) - datetime.fromisoformat(alloc.started_at)
    assert ran < timedelta(seconds=60)
    # Paid for the seconds it ran, not for the two minutes it asked for; the rest refunded.
    assert alloc.cost_micro_usd is not None and 0 < alloc.cost_micro_usd < view.max_cost_micro_usd
    assert world.client.account("dev").balance.debits_pending == 0
    assert world.client.verify_ledger().ok


@pytest.mark.ray
def test_a_driver_that_stops_kills_the_commands_it_was_running(
    ray_session: None, sqlite_world: World, tmp_path: Path
) -> None:
    world = sqlite_world
    pid_file = tmp_path / "pid"
    script = (
        f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    )
    job_id = world.submit(job(command=["python", "-c", script], resources={"gpus": 1}))
    driver = Driver(world.client.market, kind="scheduler")
    try:
        assert driver.cycle().launched
        deadline = time.monotonic() + 30
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        pid = int(pid_file.read_text())
    finally:
        driver.stop()
    assert _gone_within(pid, seconds=10)  # killed with its task, not orphaned
    assert world.client.job(job_id).state == JobState.PENDING  # lost: queued again


def _gone_within(pid: int, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False
