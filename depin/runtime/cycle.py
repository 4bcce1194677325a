"""One batch planned and reserved: what a scheduling cycle does between reading and launching."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from depin.gcpause import gc_paused
from depin.runtime.work import CycleCommit, PendingWork
from scheduler.offers import Snapshot
from scheduler.plan import Plan, plan


class Committer(Protocol):
    """Where a planned batch is reserved (the market)."""

    def commit_plan(
        self, work: PendingWork, result: Plan, *, driver_id: str | None
    ) -> CycleCommit: ...


@dataclass(frozen=True, slots=True)
class Scheduled:
    """What planning and reserving one batch did, and how long each took."""

    mode: str
    commit: CycleCommit
    plan_s: float
    commit_s: float
    work: dict[str, int]  # what planning evaluated (``Plan.work``)


def schedule(
    market: Committer, work: PendingWork, snap: Snapshot, *, mode: str, driver_id: str | None
) -> Scheduled:
    """Plan the pending work on the snapshot and reserve the plan in one transaction.

    The cyclic collector stays off for the whole of it: the plan's ~100k small
    objects are freed (by reference counting) before it could walk them, where
    a collection between planning and committing would walk them all.
    """
    with gc_paused():
        start = time.perf_counter()
        result = plan(work.specs, snap, mode=mode, keys=work.job_ids)
        planned = time.perf_counter()
        commit = market.commit_plan(work, result, driver_id=driver_id)
        done = time.perf_counter()
        planned_mode, planned_work = result.mode, result.work
        del result
    return Scheduled(planned_mode, commit, planned - start, done - planned, planned_work)
