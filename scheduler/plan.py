"""plan(jobs, offers) -> Plan: filter -> score -> assign, pure and vectorized.

The pipeline in one screen:

    Request.of(spec)            what the job needs, computed once (PreFilter)
    feasibility.evaluate        static checks + free capacity, with a count of
                                nodes each check rejected (Nomad's AllocMetric)
    scoring.score               cost, latency, reliability: 0-100 each, weighted
    pick                        best total; ties go to the cheaper, then lower id
    Snapshot.take               book the GPUs so later jobs see what is left

No I/O happens here: the same call serves the scheduler loop, the benchmarks
and ``depin job explain``.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np

from depin.spec import JobSpec
from scheduler.feasibility import Feasibility, Request, evaluate
from scheduler.offers import Offer, Snapshot
from scheduler.scoring import Scores, score

MODES = ("fast",)
TOP_CANDIDATES = 3


@dataclass(frozen=True, slots=True)
class Assignment:
    """One job (or replica) placed on one node."""

    job: Hashable
    node_id: int
    gpus: int
    rtt_ms: float | None
    price_usd_per_gpu_hour: float
    score: float


@dataclass(frozen=True, slots=True)
class Candidate:
    """A scored node, kept so a placement can be explained."""

    node_id: int
    total: float
    scores: dict[str, float]
    rtt_ms: float | None
    price_usd_per_gpu_hour: float


@dataclass(slots=True)
class JobMetric:
    """Why a job went where it went, or nowhere."""

    nodes_evaluated: int
    filtered: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0
    feasible: int = 0
    candidates: list[Candidate] = field(default_factory=list)

    @property
    def never_fits(self) -> bool:
        """No node passes the static constraints: waiting will not help."""
        return self.feasible == 0

    def reasons(self, gpus: int) -> list[str]:
        """Human-readable reasons for not placing the job, most capacity first."""
        if self.nodes_evaluated == 0:
            return ["no nodes are registered"]
        lines = [
            f"{label}: rejected {count} of {self.nodes_evaluated} nodes"
            for label, count in sorted(self.filtered.items(), key=lambda kv: -kv[1])
        ]
        if self.exhausted:
            lines.append(
                f"{self.exhausted} node(s) meet every constraint but are busy "
                f"(fewer than {gpus} GPU(s) free); the job waits"
            )
        return lines

    def to_dict(self) -> dict[str, object]:
        return {
            "nodes_evaluated": self.nodes_evaluated,
            "filtered": dict(self.filtered),
            "exhausted": self.exhausted,
            "feasible": self.feasible,
            "candidates": [
                {
                    "node_id": c.node_id,
                    "total": round(c.total, 2),
                    "scores": {k: round(v, 2) for k, v in c.scores.items()},
                    "rtt_ms": None if c.rtt_ms is None else round(c.rtt_ms, 2),
                    "price_usd_per_gpu_hour": c.price_usd_per_gpu_hour,
                }
                for c in self.candidates
            ],
        }


@dataclass(slots=True)
class Plan:
    """Where each job goes, and why the others go nowhere."""

    placements: list[Assignment] = field(default_factory=list)
    unplaced: dict[Hashable, list[str]] = field(default_factory=dict)
    metrics: dict[Hashable, JobMetric] = field(default_factory=dict)
    mode: str = "fast"

    def never_fits(self, job: Hashable) -> bool:
        """True when ``job`` is unplaced and no node could ever take it."""
        return job in self.unplaced and self.metrics[job].never_fits


def plan(
    jobs: Sequence[JobSpec],
    offers: Sequence[Offer],
    *,
    mode: str = "fast",
    keys: Sequence[Hashable] | None = None,
) -> Plan:
    """Place ``jobs`` (in priority order) on ``offers`` within their free capacity.

    ``keys`` name the jobs in the result (default: their names); pass ids when
    names may repeat.
    """
    if mode not in MODES:
        raise ValueError(f"unknown plan mode {mode!r}; expected one of {MODES}")
    keys = [j.name for j in jobs] if keys is None else list(keys)
    if len(keys) != len(jobs) or len(set(keys)) != len(keys):
        raise ValueError("plan() needs one distinct key per job")
    snap = Snapshot(offers)
    result = Plan(mode=mode)
    for key, spec in zip(keys, jobs, strict=True):
        req = Request.of(spec)
        feas = evaluate(req, snap)
        metric = _metric(snap, feas)
        result.metrics[key] = metric
        rows = np.flatnonzero(feas.fits_now)
        if len(rows) == 0:
            result.unplaced[key] = metric.reasons(req.gpus)
            continue
        scores = score(req, snap, rows)
        order = _order(snap, scores)
        metric.candidates = _candidates(snap, scores, order[:TOP_CANDIDATES])
        best = int(order[0])
        snap.take(int(scores.rows[best]), req.gpus)
        result.placements.append(_assignment(key, req, snap, scores, best))
    return result


def _metric(snap: Snapshot, feas: Feasibility) -> JobMetric:
    return JobMetric(
        nodes_evaluated=snap.size,
        filtered=feas.filtered,
        exhausted=feas.exhausted,
        feasible=int(np.count_nonzero(feas.static_ok)),
    )


def _order(snap: Snapshot, scores: Scores) -> np.ndarray:
    """Candidate positions best first: highest total, then cheaper, then lower node id."""
    rows = scores.rows
    return np.lexsort((snap.node_id[rows], snap.price[rows], -scores.total))


def _candidates(snap: Snapshot, scores: Scores, positions: np.ndarray) -> list[Candidate]:
    return [
        Candidate(
            node_id=int(snap.node_id[scores.rows[i]]),
            total=float(scores.total[i]),
            scores={name: float(v[i]) for name, v in scores.by_scorer.items()},
            rtt_ms=None if scores.rtt_ms is None else float(scores.rtt_ms[i]),
            price_usd_per_gpu_hour=float(snap.price[scores.rows[i]]),
        )
        for i in positions
    ]


def _assignment(key: Hashable, req: Request, snap: Snapshot, scores: Scores, i: int) -> Assignment:
    row = int(scores.rows[i])
    return Assignment(
        job=key,
        node_id=int(snap.node_id[row]),
        gpus=req.gpus,
        rtt_ms=None if scores.rtt_ms is None else float(scores.rtt_ms[i]),
        price_usd_per_gpu_hour=float(snap.price[row]),
        score=float(scores.total[i]),
    )


@dataclass(frozen=True, slots=True)
class Admission:
    """Whether a job could ever run on the given nodes, ignoring what is busy now."""

    feasible_node_ids: list[int]
    metric: JobMetric
    reasons: list[str]

    @property
    def ok(self) -> bool:
        return bool(self.feasible_node_ids)


def admit(spec: JobSpec, offers: Sequence[Offer]) -> Admission:
    """Static feasibility of one job: the nodes that could take it once they are free."""
    snap = Snapshot(offers)
    req = Request.of(spec)
    feas = evaluate(req, snap)
    metric = _metric(snap, feas)
    node_ids = [int(n) for n in snap.node_id[feas.static_ok]]
    reasons = [] if node_ids else metric.reasons(req.gpus)
    return Admission(node_ids, metric, reasons)
