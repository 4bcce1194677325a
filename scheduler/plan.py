"""plan(jobs, offers) -> Plan: filter -> score -> assign, pure and vectorized.

The pipeline in one screen:

    Snapshot(offers)        struct of arrays; nodes grouped into classes
    build_batch             jobs grouped into request classes; per class, once:
      feasibility.evaluate    static checks per node class, latency per location,
                              each counting the nodes it rejected (AllocMetric)
      scoring                 CellScores.of: cost, latency, reliability 0-100 per
                              cell, weighted
    Batch.rank              best_rows per class: exact totals + spread, the top
                            candidates (for the greedy, enough to place from)
    assign_fast             regret-ordered greedy + augmenting repair   (mode="fast")
    assign_optimal          min-cost flow, max placements then score    (mode="optimal")
    Plan                    placements; for every job left out a Status: waiting or
                            never, with all its reasons

No I/O happens here: the same call serves the scheduler loop, the benchmarks
and ``depin job explain``. plan() is pure: given a Snapshot, it books on a
scratch copy (``Snapshot.scratch``) and leaves the one it was given as it
was, so one snapshot can be planned on again, explained or searched; a
caller that wants the placements booked in it does so itself (``take``).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from depin.gcpause import gc_paused
from depin.spec import JobSpec
from scheduler import sparse
from scheduler.assign import Assigned, assign_fast
from scheduler.batch import Batch, build_batch
from scheduler.explain import Candidate, JobMetric, suggestions
from scheduler.feasibility import evaluate
from scheduler.flow import assign_optimal, estimate_arcs
from scheduler.offers import Offer, Snapshot
from scheduler.request import Request
from scheduler.status import Code, Status

MODES = ("fast", "optimal", "auto")
# mode="auto" solves exactly when the flow has at most this many arcs (~1 s here).
OPTIMAL_MAX_ARCS = 1_000_000
# Suggestions for jobs that only wait for capacity, when at most this many request classes wait.
SUGGEST_FOR_GROUPS = 8

__all__ = ["Admission", "Assignment", "Candidate", "JobMetric", "Plan", "admit", "plan"]


class Assignment(NamedTuple):
    """One job (or one replica of it) placed on one node (a NamedTuple: a batch makes 20k)."""

    job: Hashable
    node_id: int
    gpus: int
    rtt_ms: float | None
    price_usd_per_gpu_hour: float
    score: float
    replica: int = 0


@dataclass(slots=True)
class Plan:
    """Where each job goes, and why the others go nowhere (each with a code: wait or never)."""

    placements: list[Assignment] = field(default_factory=list)
    unplaced: dict[Hashable, Status] = field(default_factory=dict)
    metrics: dict[Hashable, JobMetric] = field(default_factory=dict)
    mode: str = "fast"
    # What planning evaluated, for the benchmarks: (job, node) pairs and the like.
    work: dict[str, int] = field(default_factory=dict)

    def never_fits(self, job: Hashable) -> bool:
        """True when ``job`` is unplaced and no node could ever take it."""
        status = self.unplaced.get(job)
        return status is not None and status.code is Code.NEVER

    def total_cost_usd_per_hour(self) -> float:
        return sum(p.price_usd_per_gpu_hour * p.gpus for p in self.placements)


def plan(
    jobs: Sequence[JobSpec],
    offers: Sequence[Offer] | Snapshot,
    *,
    mode: str = "fast",
    keys: Sequence[Hashable] | None = None,
    regret: bool = True,
    repair: bool = True,
    per_job: bool | None = None,
) -> Plan:
    """Place ``jobs`` (in priority order) on ``offers`` within their free capacity.

    ``keys`` name the jobs in the result (default: their names); pass ids when
    names may repeat. ``mode="auto"`` solves exactly when the batch is small
    enough. ``regret`` and ``repair`` exist to measure plain greedy against them.
    ``per_job`` takes the per-job path (``scheduler.sparse``) or the class path;
    None chooses (``sparse.worth_it``): per job when most jobs, or most nodes,
    are their own class, or a few jobs meet a big fleet. On that path
    ``optimal`` (and ``auto``, for two jobs or more) places by a min-cost flow
    over each job's best candidates before the greedy.
    A Snapshot given as ``offers`` is left unchanged.
    """
    if mode not in MODES:
        raise ValueError(f"unknown plan mode {mode!r}; expected one of {MODES}")
    keys = [j.name for j in jobs] if keys is None else list(keys)
    if len(keys) != len(jobs) or len(set(keys)) != len(keys):
        raise ValueError("plan() needs one distinct key per job")
    base = offers if isinstance(offers, Snapshot) else Snapshot(offers)
    if per_job is None:
        per_job = sparse.worth_it(jobs, base)
    with gc_paused():
        if per_job and all(sparse.eligible(j) for j in jobs):
            # The per-job path books on a copy of the free GPUs alone: no scratch snapshot.
            return _plan_per_job(jobs, keys, base, mode=mode, regret=regret, repair=repair)
        if per_job:
            sparse.fleet_columns(base)  # cached on the caller's snapshot for its next plan
        # Assignment books as it goes (so one batch never double-books a node): on a copy.
        snap = base.scratch() if base is offers else base
        if per_job:
            return _plan_per_job(jobs, keys, snap, mode=mode, regret=regret, repair=repair)
        batch = build_batch(jobs, keys, snap)
        if mode == "auto":
            mode = "optimal" if _flow_pays_off(jobs, batch) else "fast"
        batch.rank(snap, ahead=mode == "fast")
        if mode == "optimal":
            result = assign_optimal(batch, snap)
        else:
            result = assign_fast(batch, snap, regret=regret, repair=repair)
        return _to_plan(result, snap, keys, mode)


def _plan_per_job(
    jobs: Sequence[JobSpec],
    keys: list[Hashable],
    snap: Snapshot,
    *,
    mode: str,
    regret: bool,
    repair: bool,
) -> Plan:
    """A batch of distinct requests (``scheduler.sparse``): the jobs it cannot take (several
    replicas or places) go first through the class path, the rest are scanned job by job."""
    simple = [i for i, spec in enumerate(jobs) if sparse.eligible(spec)]
    if len(simple) < len(jobs):
        others = sorted(set(range(len(jobs))) - set(simple))
        other_keys = [keys[i] for i in others]
        batch = build_batch([jobs[i] for i in others], other_keys, snap)
        batch.rank(snap, ahead=True)
        out = _to_plan(
            assign_fast(batch, snap, regret=regret, repair=repair), snap, other_keys, "fast"
        )
    else:
        out = Plan(mode="fast")
    specs = [jobs[i] for i in simple]
    optimal = mode == "optimal" or (mode == "auto" and len(specs) >= 2)
    done = sparse.place(specs, snap, regret=regret, repair=repair, optimal=optimal)
    rows = [p.row for p in done.placed]
    node_ids, prices = snap.node_id[rows].tolist(), snap.price[rows].tolist()
    for p, node_id, price in zip(done.placed, node_ids, prices, strict=True):
        key = keys[simple[p.index]]
        gpus = specs[p.index].resources.gpus
        out.placements.append(Assignment(key, node_id, gpus, p.rtt_ms, price, p.total))
    for i, metric in done.metrics.items():
        out.metrics[keys[simple[i]]] = metric
    for i in done.failed:
        key = keys[simple[i]]
        out.unplaced[key] = out.metrics[key].status(specs[i].resources.gpus)
    order = {key: n for n, key in enumerate(keys)}
    out.placements.sort(key=lambda a: order[a.job])
    out.mode = "optimal" if optimal else "fast"
    out.work = {**done.work, "classes": snap.classes, "cells": snap.cells}
    return out


def _flow_pays_off(jobs: Sequence[JobSpec], batch: Batch) -> bool:
    """Solve exactly unless the batch is one job or the flow is too big."""
    return len(jobs) >= 2 and estimate_arcs(batch) <= OPTIMAL_MAX_ARCS


def _to_plan(result: Assigned, snap: Snapshot, keys: list[Hashable], mode: str) -> Plan:
    out = Plan(mode=mode)
    placed_by_key = result.placed
    placed = [key for key in keys if key in placed_by_key]  # in the jobs' order
    rows: list[int] = []
    for key in placed:
        rows += placed_by_key[key][1].rows
    node_ids, prices = snap.node_id[rows].tolist(), snap.price[rows].tolist()
    placements, metrics = out.placements, out.metrics
    i = 0
    for key in placed:
        group, pick = placed_by_key[key]
        metrics[key] = group.metric
        gpus, totals, rtts = group.req.gpus, pick.totals, pick.rtts
        if len(totals) == 1:  # one replica, most jobs: no per-replica loop
            placements.append(Assignment(key, node_ids[i], gpus, rtts[0], prices[i], totals[0]))
            i += 1
            continue
        for n, (total, rtt) in enumerate(zip(totals, rtts, strict=True)):
            placements.append(Assignment(key, node_ids[i], gpus, rtt, prices[i], total, n))
            i += 1
    suggest = len({id(g) for g, _ in result.failed}) <= SUGGEST_FOR_GROUPS
    explained: dict[int, tuple[JobMetric, Status]] = {}  # a request class is judged once
    for group, key in result.failed:
        if id(group) not in explained:
            metric = group.unplaced_metric(snap, suggest=suggest)
            explained[id(group)] = (metric, metric.status(group.req.gpus))
        metrics[key], out.unplaced[key] = explained[id(group)]
    return out


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a job could ever run on the given nodes, ignoring what is busy now.

    ``status`` is ``never``, with every reason, for a job to refuse; else ``waiting``
    (for the scheduler), with no reasons.
    """

    feasible_node_ids: list[int]
    metric: JobMetric
    status: Status

    @property
    def ok(self) -> bool:
        return self.status.code is not Code.NEVER


def admit(spec: JobSpec, offers: Sequence[Offer] | Snapshot) -> Admission:
    """Static feasibility of one job: the nodes that could take it once they are free (or,
    offline now, back)."""
    snap = offers if isinstance(offers, Snapshot) else Snapshot(offers)
    req = Request.of(spec)
    feas = evaluate(req, snap)
    metric = JobMetric.of(feas, req.replicas)
    metric.offline = feas.offline(snap)  # in feasible too: a job only they fit is admitted
    node_ids = [int(n) for n in snap.node_id[feas.static_rows(snap)]]
    if metric.never_fits:
        metric.suggestions = suggestions(req, snap)
        return Admission(node_ids, metric, metric.status(req.gpus))
    metric.code = Code.WAITING
    return Admission(node_ids, metric, Status(Code.WAITING))
