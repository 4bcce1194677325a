"""One scheduling cycle, and the driver that repeats it.

    pending_work -> plan -> commit_plan (reserve) -> claim_reserved -> launch on Ray
                                                      poll Ray -> finish (settle)

Ray tasks die with the process that submitted them, so a driver is long-lived:
``depin scheduler run`` for the whole market, or ``depin job submit --wait``
for its own job while no scheduler is running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from depin.market import Marketplace
from depin.reserve import CycleCommit, PendingWork
from scheduler.cycle import schedule
from scheduler.executor import RayExecutor
from scheduler.offers import Snapshot
from scheduler.work import Outcome

POLL_INTERVAL_S = 0.25
HEARTBEAT_INTERVAL_S = 5.0


@dataclass(slots=True)
class CycleReport:
    """What one cycle did."""

    pending: int = 0
    commit: CycleCommit = field(default_factory=CycleCommit)
    launched: list[int] = field(default_factory=list)
    finished: list[Outcome] = field(default_factory=list)


class Driver:
    """Plans, reserves, launches and settles; ``job_ids`` limits it to those jobs."""

    def __init__(
        self,
        market: Marketplace,
        executor: RayExecutor | None = None,
        *,
        kind: str = "scheduler",
        job_ids: Sequence[int] | None = None,
        launch: bool = True,
        mode: str = "auto",
    ) -> None:
        self.market = market
        self.executor = executor or RayExecutor(market.settings.ray_address)
        self.kind = kind
        self.job_ids = None if job_ids is None else list(job_ids)
        self.launch = launch
        self.mode = mode
        self.driver_id = market.register_driver(kind)
        self._last_heartbeat = time.monotonic()
        # The fleet as a snapshot kept across cycles: rebuilt when nodes change, else only
        # its free GPUs are refreshed from the database.
        self._snapshot: Snapshot | None = None
        self._nodes_version: int | None = None
        self._prices: dict[int, int] = {}

    def cycle(self, *, wait_s: float = 0.0) -> CycleReport:
        """Plan and reserve pending jobs, launch what was reserved, settle what ended."""
        self._heartbeat()
        report = CycleReport()
        snap, work = self._refresh()
        report.pending = len(work.job_ids)
        node_gpus = dict(zip(snap.node_id.tolist(), snap.gpus_total.tolist(), strict=True))
        self.executor.restart_if_idle(node_gpus)
        if work.job_ids:
            # Nodes Ray cannot reach yet are busy, not gone: jobs wait for them.
            reachable = self.executor.reachable(list(node_gpus))
            snap.block([n for n in node_gpus if n not in reachable])
            work = replace(work, price_micro=self._prices)
            # Reserved for this driver to launch, or (with launch off) for any launcher.
            owner = self.driver_id if self.launch else None
            report.commit = schedule(
                self.market, work, snap, mode=self.mode, driver_id=owner
            ).commit
        if self.launch:
            launches = self.market.claim_reserved(self.driver_id)
            if launches:
                self.executor.start(node_gpus)
            for item in launches:
                self.executor.launch(item)
                report.launched.append(item.allocation_id)
        for outcome in self.executor.poll(timeout_s=wait_s):
            self.market.finish(outcome)
            report.finished.append(outcome)
        return report

    def _refresh(self) -> tuple[Snapshot, PendingWork]:
        """This cycle's pending jobs, and the cached snapshot brought up to date."""
        known = self._nodes_version if self._snapshot is not None else None
        work = self.market.pending_work(self.job_ids, nodes_version=known)
        if work.offers is not None or self._snapshot is None:
            assert work.offers is not None
            self._snapshot = Snapshot(work.offers)
            self._nodes_version, self._prices = work.nodes_version, work.price_micro
        else:
            assert work.free is not None
            self._snapshot.set_free(*work.free)
        return self._snapshot, work

    def run(self, *, until: Callable[[], bool], timeout_s: float | None = None) -> None:
        """Cycle until ``until()`` is true (checked between cycles) or the timeout passes."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not until():
            if deadline is not None and time.monotonic() > deadline:
                break
            report = self.cycle(wait_s=POLL_INTERVAL_S if self.executor.running else 0.0)
            if not self.executor.running and not report.launched and not report.finished:
                time.sleep(POLL_INTERVAL_S)

    def stop(self) -> None:
        """Give up: allocations still running are lost and their jobs requeued."""
        now = datetime.now(UTC)
        for launch in self.executor.abandon():
            self.market.finish(
                Outcome(launch.allocation_id, now, now, None, "", f"{self.kind} stopped", lost=True)
            )
        self.market.retire_driver(self.driver_id)
        self.executor.shutdown()

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _heartbeat(self) -> None:
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_INTERVAL_S:
            self.market.driver_heartbeat(self.driver_id)
            self._last_heartbeat = time.monotonic()
