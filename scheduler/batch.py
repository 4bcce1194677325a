"""A batch of jobs grouped by request class, each group scored once against the snapshot.

A ``Group`` holds the jobs that ask for the same thing, in priority order,
their feasibility, their candidates ordered best first, and the metric that
explains every placement the group makes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from depin.spec import JobSpec
from scheduler.explain import Candidate, JobMetric, suggestions
from scheduler.feasibility import Feasibility, evaluate
from scheduler.offers import Snapshot
from scheduler.request import Request, request_key
from scheduler.scoring import References, Scored, best_first, score, top

TOP_CANDIDATES = 3
# How many candidates to order up front, per replica the group needs; more are sorted on demand.
_ORDER_AHEAD = 2
_ORDER_MIN = 16


@dataclass(slots=True)
class Group:
    """Jobs of one request class, and everything computed for them once."""

    req: Request
    keys: list[Hashable]
    feas: Feasibility
    refs: References
    scored: Scored  # the candidates that had room when the batch started
    order: np.ndarray  # indices into ``scored``, best first (maybe only a prefix)
    fully_ordered: bool
    metric: JobMetric
    pointer: int = 0
    first_index: int = 0  # position of the group's first job in the batch (priority)

    @property
    def demand(self) -> int:
        return len(self.keys) * self.req.replicas

    def options(self, snap: Snapshot) -> int:
        """Replica-sized slots on the group's candidates (the fewer, the sooner it goes)."""
        return int((snap.gpus_free[self.scored.rows] // self.req.gpus).sum())

    def regret(self) -> float:
        """The loss if the best node is taken: best total minus the next best."""
        if len(self.order) < 2:
            return float("inf")
        return float(self.scored.total[self.order[0]] - self.scored.total[self.order[1]])

    def ensure_ordered(self, snap: Snapshot) -> None:
        if not self.fully_ordered:
            self.order = best_first(snap, self.scored)
            self.fully_ordered = True

    def unplaced_metric(self, snap: Snapshot) -> JobMetric:
        """The group's metric as it stands now that a job of it found no room."""
        metric = JobMetric(
            nodes_evaluated=self.metric.nodes_evaluated,
            filtered=dict(self.metric.filtered),
            exhausted=self.feas.exhausted(snap, self.req.gpus),
            feasible=self.metric.feasible,
            candidates=[],
            replicas=self.req.replicas,
        )
        metric.suggestions = suggestions(self.req, snap)
        return metric


@dataclass(slots=True)
class Batch:
    groups: list[Group] = field(default_factory=list)
    spec_of: dict[Hashable, JobSpec] = field(default_factory=dict)


def build_batch(jobs: Sequence[JobSpec], keys: Sequence[Hashable], snap: Snapshot) -> Batch:
    """Group jobs by request class (first-seen order) and evaluate each class once."""
    by_key: dict[str, Group] = {}
    batch = Batch()
    for index, (key, spec) in enumerate(zip(keys, jobs, strict=True)):
        batch.spec_of[key] = spec
        rkey = request_key(spec)
        group = by_key.get(rkey)
        if group is None:
            group = by_key[rkey] = _evaluate_group(Request.of(spec, rkey), snap, index)
            batch.groups.append(group)
        group.keys.append(key)
    for group in batch.groups:
        _order_for_demand(group, snap)
    return batch


def _evaluate_group(req: Request, snap: Snapshot, index: int) -> Group:
    feas = evaluate(req, snap)
    refs = References.of(snap, feas)
    scored = score(req, snap, feas, refs, feas.fits_now(snap, req.gpus))
    metric = JobMetric(
        nodes_evaluated=feas.nodes_evaluated,
        filtered=feas.filtered,
        exhausted=len(feas.static_rows) - len(scored.rows),
        feasible=len(feas.static_rows),
        replicas=req.replicas,
    )
    best = top(snap, scored, TOP_CANDIDATES)
    metric.candidates = [_candidate(snap, scored, int(i)) for i in best]
    return Group(
        req,
        [],
        feas,
        refs,
        scored,
        best,
        len(scored.rows) <= TOP_CANDIDATES,
        metric,
        first_index=index,
    )


def _order_for_demand(group: Group, snap: Snapshot) -> None:
    """Order enough candidates for the group's demand; the rest wait until needed."""
    k = max(_ORDER_MIN, _ORDER_AHEAD * group.demand)
    if group.fully_ordered or len(group.scored.rows) <= k:
        group.ensure_ordered(snap)
    else:
        group.order = top(snap, group.scored, k)


def _candidate(snap: Snapshot, scored: Scored, i: int) -> Candidate:
    row = int(scored.rows[i])
    return Candidate(
        node_id=int(snap.node_id[row]),
        total=float(scored.total[i]),
        scores=scored.by_scorer(i),
        rtt_ms=None if scored.rtt_ms is None else float(scored.rtt_ms[i]),
        price_usd_per_gpu_hour=float(snap.price[row]),
    )
