"""A batch of jobs grouped by request class, each class evaluated once against the snapshot.

A ``Group`` holds the jobs that ask for the same thing, in priority order,
their feasibility, their cell scores, the candidates ranked so far, and the
metric that explains every placement the group makes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from depin.spec import JobSpec
from scheduler.explain import Candidate, JobMetric, suggestions
from scheduler.feasibility import Feasibility, evaluate
from scheduler.offers import Snapshot
from scheduler.request import Request, RequestKey, request_key
from scheduler.scoring import CellScores, Ranked, best_rows, row_totals

TOP_CANDIDATES = 3
# Rank this many candidates per replica the group needs, at least _RANK_MIN; more on demand.
_RANK_AHEAD = 2
_RANK_MIN = 8


_UNRANKED = Ranked(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), complete=False)


@dataclass(slots=True)
class Group:
    """Jobs of one request class, and everything computed for them once."""

    req: Request
    keys: list[Hashable]
    feas: Feasibility
    cs: CellScores
    metric: JobMetric
    first_index: int  # the group's first job's position in the batch (its priority)
    ranked: Ranked = _UNRANKED  # set by Batch.rank
    pointer: int = 0  # ranked rows before this one cannot fit the group any more

    @property
    def demand(self) -> int:
        return len(self.keys) * self.req.replicas

    def options(self, snap: Snapshot) -> int:
        """About how many replicas the group's feasible nodes have room for (fewer: sooner)."""
        return int(snap.cell_free_sum[self.feas.cells].sum()) // self.req.gpus

    def regret(self) -> float:
        """The loss if the best node is taken: best total minus the next best."""
        if len(self.ranked.rows) < 2:
            return float("inf")
        return float(self.ranked.total[0] - self.ranked.total[1])

    def rank(self, snap: Snapshot, k: int) -> None:
        """Rank at least the ``k`` best candidates with room now, and start over at the top."""
        self.ranked = best_rows(self.req, snap, self.feas, self.cs, k)
        self.pointer = 0

    def unplaced_metric(self, snap: Snapshot, *, suggest: bool) -> JobMetric:
        """The group's metric as it stands now that a job of it found no room.

        Suggestions take a pass over the whole snapshot per constraint, so a big
        batch computes them only for jobs that can never fit (``suggest``).
        """
        metric = JobMetric.of(self.feas, self.req.replicas)
        metric.exhausted = self.feas.exhausted(snap, self.req.gpus)
        metric.offline = self.feas.offline(snap)
        if suggest or metric.never_fits:
            metric.suggestions = suggestions(self.req, snap)
        return metric


@dataclass(slots=True)
class Batch:
    groups: list[Group] = field(default_factory=list)

    def rank(self, snap: Snapshot, *, ahead: bool) -> None:
        """Rank each class's best candidates with room now, before anything is placed: the
        top few explain its placements; ``ahead`` ranks enough for the greedy to place from
        (the flow places by cells and needs only the few)."""
        for g in self.groups:
            k = max(_RANK_MIN, _RANK_AHEAD * g.demand) if ahead else TOP_CANDIDATES
            g.rank(snap, k)
            g.metric.candidates = candidates(snap, g.cs, g.ranked, TOP_CANDIDATES)


def build_batch(jobs: Sequence[JobSpec], keys: Sequence[Hashable], snap: Snapshot) -> Batch:
    """Group jobs by request class (first-seen order) and evaluate each class once (unranked)."""
    group_of_key: dict[RequestKey, int] = {}
    # Jobs made from one template share their sub-models: look them up by identity first,
    # so each distinct object tuple is hashed by value only once.
    group_of_identity: dict[tuple[int, ...], int] = {}
    members: list[list[Hashable]] = []
    firsts: list[tuple[int, JobSpec]] = []
    for index, (key, spec) in enumerate(zip(keys, jobs, strict=True)):
        identity = (
            id(spec.resources),
            id(spec.placement),
            id(spec.pricing),
            id(spec.objective),
            spec.replicas,
        )
        gi = group_of_identity.get(identity)
        if gi is None:
            rkey = request_key(spec)
            gi = group_of_key.get(rkey)
            if gi is None:
                gi = group_of_key[rkey] = len(members)
                members.append([])
                firsts.append((index, spec))
            group_of_identity[identity] = gi
        members[gi].append(key)
    # Feasibility once per class (class verdicts shared), then every class's cell scores in
    # one pass. The metric explains placements; a job left out gets ``unplaced_metric``.
    verdicts: dict = {}
    reqs = [Request.of(spec) for _, spec in firsts]
    feasibilities = [evaluate(req, snap, verdicts) for req in reqs]
    scores = CellScores.of_many(reqs, snap, feasibilities)
    return Batch(
        [
            Group(req, keys, feas, cs, JobMetric.of(feas, req.replicas), index)
            for req, keys, feas, cs, (index, _) in zip(
                reqs, members, feasibilities, scores, firsts, strict=True
            )
        ]
    )


def candidates(snap: Snapshot, cs: CellScores, ranked: Ranked, k: int) -> list[Candidate]:
    """The ``k`` best ranked rows as explainable candidates."""
    rows, pos = ranked.rows[:k], ranked.cell_pos[:k]
    rtts = [None] * len(rows) if cs.rtt_ms is None else np.round(cs.rtt_ms[pos], 2).tolist()
    return [
        Candidate(
            node_id=node_id,
            total=total,
            scores={"cost": cost, "latency": latency, "reliability": reliability},
            rtt_ms=rtt,
            price_usd_per_gpu_hour=price,
        )
        for node_id, total, cost, latency, reliability, rtt, price in zip(
            snap.node_id[rows].tolist(),
            np.round(ranked.total[:k], 2).tolist(),
            np.round(cs.cost[pos], 2).tolist(),
            np.round(cs.latency[pos], 2).tolist(),
            np.round(snap.reliability_score[rows], 2).tolist(),
            rtts,
            snap.price[rows].tolist(),
            strict=True,
        )
    ]


def row_score(group: Group, snap: Snapshot, row: int) -> tuple[float, float | None]:
    """(total, rtt) of one feasible row for the group, as ranking would compute them now."""
    pos = np.searchsorted(group.feas.cells, snap.node_cell[row])
    total = row_totals(group.req, snap, group.cs, np.array([row]), np.array([pos]))[0]
    rtt = None if group.cs.rtt_ms is None else float(group.cs.rtt_ms[pos])
    return float(total), rtt
