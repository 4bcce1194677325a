"""Why a job went where it went, or nowhere: the record ``depin job explain`` prints.

For an unplaced job, each constraint is dropped in turn (leave-one-out) to
see what the others alone would allow, and the least change to that
constraint which reaches some node becomes a suggestion:
"max_latency_ms 63 would reach 14 nodes".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scheduler.feasibility import (
    Feasibility,
    class_checks,
    latency_label,
    location_min_dot,
    location_thresholds,
)
from scheduler.latency import distance_km_from_dot, rtt_ms_array
from scheduler.offers import ACCELERATOR_CODES, MODEL_CODES, TIER_CODES, Snapshot
from scheduler.request import Request
from scheduler.status import Code, Status

_MODEL_NAMES = {code: name for name, code in MODEL_CODES.items()}
_TIER_NAMES = {code: name for name, code in TIER_CODES.items()}
_ACCELERATOR_NAMES = {code: name for name, code in ACCELERATOR_CODES.items()}


@dataclass(frozen=True, slots=True)
class Candidate:
    """A scored node, kept so a placement can be explained (figures to two decimals, as
    the record keeps them)."""

    node_id: int
    total: float
    scores: dict[str, float]
    rtt_ms: float | None
    price_usd_per_gpu_hour: float


@dataclass(slots=True)
class JobMetric:
    """Nomad's AllocMetric for one job: what was evaluated, filtered, exhausted and scored."""

    nodes_evaluated: int
    filtered: dict[str, int] = field(default_factory=dict)
    exhausted: int = 0  # feasible nodes that are up but busy
    offline: int = 0  # feasible nodes that are offline or draining
    feasible: int = 0
    candidates: list[Candidate] = field(default_factory=list)
    suggestions: list[str] = field(default_factory=list)
    replicas: int = 1
    code: Code | None = None  # set when the job is left out (``status``); None when placed

    @classmethod
    def of(cls, feas: Feasibility, replicas: int) -> JobMetric:
        """The static part of the metric: what was evaluated and what each check filtered."""
        return cls(
            nodes_evaluated=feas.nodes_evaluated,
            filtered=dict(feas.filtered),
            feasible=feas.feasible,
            replicas=replicas,
        )

    @property
    def never_fits(self) -> bool:
        """Too few nodes pass the static constraints: waiting will not help."""
        return self.feasible < self.replicas

    def status(self, gpus: int) -> Status:
        """The verdict on a job left out: it waits, or it never fits; with all its reasons.
        The code is kept on the metric too, so the record ``depin job explain`` prints has it."""
        self.code = Code.NEVER if self.never_fits else Code.WAITING
        return Status(self.code, tuple(self.reasons(gpus)))

    def reasons(self, gpus: int) -> list[str]:
        """Why the job is not placed: constraints by capacity rejected, then what would help."""
        if self.nodes_evaluated == 0:
            return ["no nodes are registered"]
        lines = [
            f"{label}: rejected {count} of {self.nodes_evaluated} nodes"
            for label, count in sorted(self.filtered.items(), key=lambda kv: -kv[1])
        ]
        if 0 < self.feasible < self.replicas:
            lines.append(
                f"needs {self.replicas} distinct nodes; only {self.feasible} meet every constraint"
            )
        if self.exhausted or self.offline:
            lines.append(self._waits_for(gpus))
        lines.extend(self.suggestions)
        return lines

    def _waits_for(self, gpus: int) -> str:
        """What the nodes that fit are doing: "3 nodes fit: 1 busy (...), 2 offline"."""
        room = self.feasible - self.exhausted - self.offline
        busy = f"busy (fewer than {gpus} GPU{'' if gpus == 1 else 's'} free)"
        counts = ((self.exhausted, busy), (self.offline, "offline"), (room, "with room"))
        parts = [(n, what) for n, what in counts if n]
        fit = f"{_count(self.feasible)} fit{'s' if self.feasible == 1 else ''}"
        then = "" if self.never_fits else "; the job waits"
        if len(parts) == 1:  # all alike
            return f"{fit}, {'' if self.feasible == 1 else 'all '}{parts[0][1]}{then}"
        return f"{fit}: " + ", ".join(f"{n} {what}" for n, what in parts) + then

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": None if self.code is None else self.code.value,
            "nodes_evaluated": self.nodes_evaluated,
            "filtered": dict(self.filtered),
            "exhausted": self.exhausted,
            "offline": self.offline,
            "feasible": self.feasible,
            "candidates": [
                {
                    "node_id": c.node_id,
                    "total": c.total,
                    "scores": c.scores,
                    "rtt_ms": c.rtt_ms,
                    "price_usd_per_gpu_hour": c.price_usd_per_gpu_hour,
                }
                for c in self.candidates
            ],
            "suggestions": list(self.suggestions),
        }


def suggestions(req: Request, snap: Snapshot) -> list[str]:
    """What change to one constraint would let the job reach some node, most rejecting first."""
    if snap.size == 0:
        return []
    checks = class_checks(req)
    class_masks = {c.label: c.test(req, snap) for c in checks}
    node_masks = {label: mask[snap.node_class] for label, mask in class_masks.items()}
    worst_dot = None
    if req.has_near:
        loc_dot = location_min_dot(req, snap)
        worst_dot = loc_dot[snap.node_location]
        if req.max_latency_ms is not None:
            node_masks[latency_label(req)] = (loc_dot >= location_thresholds(req, snap))[
                snap.node_location
            ]
    names = {c.label: c.name for c in checks}
    if req.max_latency_ms is not None:
        names[latency_label(req)] = "latency"
    rejected = {label: int(np.count_nonzero(~m)) for label, m in node_masks.items()}
    out = []
    for label in sorted(node_masks, key=lambda lb: -rejected[lb]):
        others = np.ones(snap.size, dtype=bool)
        for other, mask in node_masks.items():
            if other != label:
                others &= mask
        rows = np.flatnonzero(others)
        if len(rows) and rejected[label]:
            text = _relax(names[label], req, snap, rows, worst_dot)
            if text:
                out.append(text)
    return out


def _count(n: int) -> str:
    return f"{n} node" + ("" if n == 1 else "s")


def _relax(
    name: str, req: Request, snap: Snapshot, rows: np.ndarray, worst_dot: np.ndarray | None
) -> str:
    """The least relaxation of constraint ``name`` that reaches some of ``rows``."""
    if name == "latency":
        assert worst_dot is not None
        rtt = rtt_ms_array(
            distance_km_from_dot(worst_dot[rows]), snap.access_rtt_ms[rows], snap.rtt_bias_ms[rows]
        )
        budget = math.ceil(float(rtt.min()))
        return f"max_latency_ms {budget} would reach {_count(int(np.count_nonzero(rtt <= budget)))}"
    if name == "price":
        cheapest = float(snap.price[rows].min())
        reach = int(np.count_nonzero(snap.price[rows] <= cheapest + 1e-12))
        return f"max_usd_per_gpu_hour {cheapest:g} would reach {_count(reach)}"
    if name == "vram_gib":
        most = float(snap.vram_gib[rows].max())
        reach = int(np.count_nonzero(snap.vram_gib[rows] >= most))
        return f"vram_gib {most:g} would reach {_count(reach)}"
    if name == "gpus":
        most = int(snap.gpus_total[rows].max())
        reach = int(np.count_nonzero(snap.gpus_total[rows] >= most))
        return f"gpus {most} would reach {_count(reach)}"
    column, labels, key = {
        "gpu_model": (snap.model, _MODEL_NAMES, "gpu_models"),
        "tier": (snap.tier, _TIER_NAMES, "tiers"),
        "accelerator": (snap.accelerator, _ACCELERATOR_NAMES, "accelerator"),
        "region": (snap.region, dict(enumerate(snap.regions)), "regions"),
    }[name]
    value, n = Counter(column[rows].tolist()).most_common(1)[0]
    if name == "accelerator":
        return f"accelerator {labels[value]} would reach {_count(n)}"
    return f"adding {labels[value]!r} to {key} would reach {_count(n)}"
