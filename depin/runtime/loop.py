"""The driver: it repeats one scheduling cycle, launches on Ray and settles what ended.

    pending_work -> plan -> commit_plan (reserve) -> claim_reserved -> launch on Ray
                                                      poll Ray -> finish (settle)

Ray tasks die with the process that submitted them, so a driver is long-lived:
``depin scheduler run`` for the whole market, or ``depin job submit --wait``
for its own job while no scheduler is running. For as long as it lives it
heartbeats (its work is requeued by whoever sees it silent), and ``run``
reconciles the market on a timer: dead peers' work, expired holds, silent nodes.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from depin.errors import DatabaseError
from depin.gcpause import gc_paused
from depin.limits import (
    HEARTBEAT_INTERVAL_S,
    MAX_UNSETTLED,
    NODE_CHECK_INTERVAL_S,
    NODE_GRACE_S,
    NODE_TTL_S,
    RECONCILE_INTERVAL_S,
    STOP_POLL_S,
)
from depin.runtime.cycle import schedule
from depin.runtime.executor import RayExecutor
from depin.runtime.work import CycleCommit, Launch, Outcome, PendingWork
from scheduler import Plan
from scheduler.offers import Snapshot

POLL_INTERVAL_S = 0.25
SUSPECT_S = NODE_TTL_S + NODE_GRACE_S  # a node Ray lost work on gets no new work this long
log = logging.getLogger("depin.runtime")


class CycleMarket(Protocol):
    """The market operations a driver calls, and nothing else."""

    def pending_work(
        self, job_ids: Sequence[int] | None = None, *, nodes_version: int | None = None
    ) -> PendingWork: ...

    def commit_plan(
        self, work: PendingWork, result: Plan, *, driver_id: str | None
    ) -> CycleCommit: ...

    def claim_reserved(self, driver_id: str, *, ray_agents_only: bool = False) -> list[Launch]: ...

    def finish(self, outcome: Outcome) -> None: ...

    def register_driver(self, kind: str) -> str: ...

    def driver_heartbeat(self, driver_id: str) -> None: ...

    def retire_driver(self, driver_id: str) -> None: ...

    def reconcile(self) -> list[int]: ...

    def cancellations(self, driver_id: str) -> list[int]: ...

    def expire_silent_nodes(self) -> list[int]: ...


@dataclass(slots=True)
class CycleReport:
    """What one cycle (or one settling pass) did."""

    pending: int = 0
    commit: CycleCommit = field(default_factory=CycleCommit)
    launched: list[int] = field(default_factory=list)
    finished: list[Outcome] = field(default_factory=list)
    requeued: list[int] = field(default_factory=list)  # by reconciliation: given up on
    errors: list[str] = field(default_factory=list)  # outcomes that could not be settled


Listener = Callable[[CycleReport], None]


class Driver:
    """Plans, reserves, launches and settles; ``job_ids`` limits it to those jobs."""

    def __init__(
        self,
        market: CycleMarket,
        executor: RayExecutor | None = None,
        *,
        ray_address: str | None = None,
        kind: str = "scheduler",
        job_ids: Sequence[int] | None = None,
        launch: bool = True,
        mode: str = "auto",
        heartbeat_interval_s: float = HEARTBEAT_INTERVAL_S,
        reconcile_interval_s: float = RECONCILE_INTERVAL_S,
        idle: Callable[[float], None] = time.sleep,
        local_ray: bool = True,
    ) -> None:
        """``idle`` waits between cycles when there is nothing to do: a server passes one
        that a submission cuts short (``depin.wakeups``). Without ``local_ray`` (a server
        for strangers) nothing runs on this machine: only nodes whose Ray-mode agents
        joined the cluster at ``ray_address`` get work from Ray, and nodes with no agent
        none at all (they wait for one)."""
        self.market = market
        self.executor = executor or RayExecutor(ray_address)
        self.kind = kind
        self.job_ids = None if job_ids is None else list(job_ids)
        self.launch = launch
        self.mode = mode
        self.heartbeat_interval_s = heartbeat_interval_s
        self.reconcile_interval_s = reconcile_interval_s
        self.driver_id = market.register_driver(kind)
        self._last_heartbeat = time.monotonic()
        self._last_reconcile: float | None = None
        # The fleet as a snapshot kept across cycles: rebuilt when nodes change, else only
        # its free GPUs are refreshed from the database.
        self._snapshot: Snapshot | None = None
        self._nodes_version: int | None = None
        self._prices: dict[int, int] = {}
        self._unsettled: list[Outcome] = []  # outcomes a database outage kept from settling
        self._last_stop_check = 0.0
        self._last_node_check = 0.0
        self._pull_nodes: frozenset[int] = frozenset()  # their agents pull work: not Ray's
        self._ray_nodes: frozenset[int] = frozenset()  # their raylets joined the cluster
        self.local_ray = local_ray
        # Nodes Ray just lost work on, until the market has had time to see them silent: Ray
        # still lists a dead raylet's resource until its health checks run, and the market
        # keeps the node active until TTL + grace, so the job would go straight back there.
        self._suspect: dict[int, float] = {}
        self._idle = idle

    # -- one step --------------------------------------------------------------------------
    def cycle(self, *, wait_s: float = 0.0) -> CycleReport:
        """Plan and reserve pending jobs, launch what was reserved, settle what ended."""
        self.heartbeat()
        report = CycleReport()
        # The cyclic collector stays off from the read to the commit, and the batch (its
        # parsed JobSpecs, the plan) is freed by reference counting inside ``_reserve``:
        # a collection on the way would walk every one of them.
        with gc_paused():
            node_gpus = self._reserve(report)
        if self.launch and node_gpus:  # a fleet of pull agents only: nothing for Ray to claim
            launches = self.market.claim_reserved(
                self.driver_id, ray_agents_only=not self.local_ray
            )
            if launches:
                self.executor.start(node_gpus)
            for item in launches:
                self.executor.launch(item)
                report.launched.append(item.allocation_id)
        self._settle(report, wait_s)
        return report

    def _reserve(self, report: CycleReport) -> dict[int, int]:
        """Read the pending jobs, plan them and reserve the plan; returns the GPUs of the
        nodes Ray may launch on."""
        snap, work = self._refresh()
        report.pending = len(work.job_ids)
        every = dict(zip(snap.node_id.tolist(), snap.gpus_total.tolist(), strict=True))
        node_gpus = {n: g for n, g in every.items() if self._rays(n)}  # what Ray may launch on
        self.executor.restart_if_idle(node_gpus)
        if work.job_ids:
            # Nodes Ray cannot reach yet are busy, not gone: jobs wait for them.
            reachable = self.executor.reachable(list(node_gpus))
            now = time.monotonic()
            self._suspect = {n: until for n, until in self._suspect.items() if until > now}
            # Nodes nobody here may launch on wait for an agent (unless a launcher elsewhere
            # takes what this driver only reserves).
            unserved = [
                n for n in every if self.launch and n not in node_gpus and n not in self._pull_nodes
            ]
            snap.block(
                [n for n in node_gpus if n not in reachable or n in self._suspect] + unserved
            )
            work = replace(work, price_micro=self._prices)
            # Reserved for this driver to launch, or (with launch off) for any launcher.
            owner = self.driver_id if self.launch else None
            report.commit = schedule(
                self.market, work, snap, mode=self.mode, driver_id=owner
            ).commit
        return node_gpus

    def settle(self, *, wait_s: float = 0.0) -> CycleReport:
        """Only settle what ended (waiting up to ``wait_s`` for the first), heartbeating."""
        self.heartbeat()
        report = CycleReport()
        self._settle(report, wait_s)
        return report

    def _settle(self, report: CycleReport, wait_s: float) -> None:
        """Settle what ended, and what a transient failure kept from settling before: an
        outcome is kept and tried again (``MAX_UNSETTLED`` at most) while the database is
        away, and dropped, with the reason, when the market refuses it for good."""
        self._stop_cancelled()
        ended = self._unsettled + self.executor.poll(timeout_s=wait_s)
        self._unsettled = []
        for outcome in ended:
            # One outcome the market refuses must not stop the others, nor the loop.
            try:
                self.market.finish(outcome)
            except DatabaseError as exc:
                if len(self._unsettled) < MAX_UNSETTLED:
                    self._unsettled.append(outcome)
                report.errors.append(f"allocation {outcome.allocation_id}: {exc} (kept)")
                continue
            except Exception as exc:
                log.exception("allocation %s could not be settled", outcome.allocation_id)
                report.errors.append(f"allocation {outcome.allocation_id}: {exc}")
                continue
            report.finished.append(outcome)
            if outcome.lost and outcome.node_id is not None:
                self._suspect[outcome.node_id] = time.monotonic() + SUSPECT_S

    def _stop_cancelled(self) -> None:
        """Stop what this driver runs for jobs their owners cancelled (checked at most every
        ``STOP_POLL_S``); each then ends and settles like any other, paid for its time."""
        now = time.monotonic()
        if not self.executor.running or now - self._last_stop_check < STOP_POLL_S:
            return
        self._last_stop_check = now
        with contextlib.suppress(DatabaseError):  # asked again at the next check
            self.executor.stop(self.market.cancellations(self.driver_id))

    def _rays(self, node_id: int) -> bool:
        """Whether this driver launches the node's work on Ray."""
        if node_id in self._pull_nodes:
            return False
        if self.local_ray:
            return True
        return self.executor.address is not None and node_id in self._ray_nodes

    def check_nodes_if_due(self) -> list[int]:
        """Every ``NODE_CHECK_INTERVAL_S``: nodes silent past TTL + grace go offline, and their
        allocations are lost (returned)."""
        now = time.monotonic()
        if now - self._last_node_check < NODE_CHECK_INTERVAL_S:
            return []
        self._last_node_check = now
        lost = self.market.expire_silent_nodes()
        if lost:
            self.executor.drop(lost)  # should the node come back, it must not run them
        return lost

    def reconcile_if_due(self) -> list[int]:
        """Reconcile the market when the interval has passed (and on the first call)."""
        now = time.monotonic()
        if self._last_reconcile is not None and (
            now - self._last_reconcile < self.reconcile_interval_s
        ):
            return []
        self._last_reconcile = now
        return self.market.reconcile()

    def heartbeat(self) -> None:
        """Tell the market this driver is alive, at most once per interval."""
        if time.monotonic() - self._last_heartbeat >= self.heartbeat_interval_s:
            self.market.driver_heartbeat(self.driver_id)
            self._last_heartbeat = time.monotonic()

    # -- loops -----------------------------------------------------------------------------
    def run_once(self, on_report: Listener | None = None) -> None:
        """One cycle, then settle what it launched until all of it has ended."""
        report = self.cycle()
        report.requeued = self.reconcile_if_due()
        _tell(on_report, report)
        while self.executor.running:
            _tell(on_report, self.settle(wait_s=POLL_INTERVAL_S))

    def run(
        self,
        *,
        until: Callable[[], bool] | None = None,
        timeout_s: float | None = None,
        on_report: Listener | None = None,
    ) -> None:
        """Cycle until ``until()`` is true (checked between cycles), the timeout passes, or
        for ever; reconciling the market every ``reconcile_interval_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while until is None or not until():
            if deadline is not None and time.monotonic() > deadline:
                break
            requeued = self.reconcile_if_due() + self.check_nodes_if_due()
            report = self.cycle(wait_s=POLL_INTERVAL_S if self.executor.running else 0.0)
            report.requeued = requeued
            _tell(on_report, report)
            idle = not (report.launched or report.finished or report.commit.reserved)
            if not self.executor.running and idle:
                self._idle(POLL_INTERVAL_S)

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

    def _refresh(self) -> tuple[Snapshot, PendingWork]:
        """This cycle's pending jobs, and the cached snapshot brought up to date."""
        known = self._nodes_version if self._snapshot is not None else None
        work = self.market.pending_work(self.job_ids, nodes_version=known)
        if work.offers is not None or self._snapshot is None:
            assert work.offers is not None
            self._snapshot = Snapshot(work.offers)
            self._nodes_version, self._prices = work.nodes_version, work.price_micro
            self._pull_nodes, self._ray_nodes = work.pull_nodes, work.ray_nodes
        else:
            assert work.free is not None
            self._snapshot.set_free(*work.free)
        return self._snapshot, work


def _tell(listener: Listener | None, report: CycleReport) -> None:
    if listener is not None:
        listener(report)
