"""A node's reliability, learned from what the market saw rather than what its provider said.

Two signals, each weighted toward the recent:

- **outcomes**: allocations the node carried to an end (whatever the job's own exit
  code) against those it lost or could not run. Counts decay by ``OUTCOME_DECAY`` per
  new outcome, so the last ~20 dominate; the provider's declared reliability is a prior
  worth ``PRIOR_OUTCOMES`` outcomes, so a few real ones outweigh it.
- **uptime**: an exponentially weighted share of heartbeats that arrived on time. Each
  heartbeat counts one on-time beat and as many missed ones as fit in the gap before it;
  ``UPTIME_DECAY`` per beat gives a half-life of about 70 beats (6 minutes at 5 s).

``reliability = uptime × (good + prior good) / (good + bad + prior)``, in [0, 1]. Pure
functions: the registry stores the state, the scorer reads the result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OUTCOME_DECAY = 0.95
PRIOR_OUTCOMES = 5.0
UPTIME_DECAY = 0.99
MAX_MISSED_BEATS = 10_000  # a gap of days counts like a long one; keeps the power small


@dataclass(frozen=True, slots=True)
class Record:
    """What a node's reliability is computed from."""

    declared: float  # the provider's own figure: the prior
    good: float = 0.0
    bad: float = 0.0
    uptime: float = 1.0

    @property
    def reliability(self) -> float:
        prior_good = PRIOR_OUTCOMES * _unit(self.declared)
        outcomes = (self.good + prior_good) / (self.good + self.bad + PRIOR_OUTCOMES)
        return _unit(self.uptime * outcomes)


def after_outcome(record: Record, *, node_fault: bool) -> Record:
    """One more allocation ended: carried to its end, or lost or failed by the node."""
    good = record.good * OUTCOME_DECAY + (0.0 if node_fault else 1.0)
    bad = record.bad * OUTCOME_DECAY + (1.0 if node_fault else 0.0)
    return Record(record.declared, good, bad, record.uptime)


def after_heartbeat(record: Record, *, gap_s: float | None, interval_s: float) -> Record:
    """A heartbeat arrived ``gap_s`` after the one before (None: the first)."""
    missed = 0 if gap_s is None else _missed_beats(gap_s, interval_s)
    uptime = record.uptime * UPTIME_DECAY ** (missed + 1) + (1 - UPTIME_DECAY)
    return Record(record.declared, record.good, record.bad, _unit(uptime))


def _missed_beats(gap_s: float, interval_s: float) -> int:
    # Up to one and a half intervals is on time: agents' timers and networks jitter.
    beats = gap_s / interval_s if interval_s > 0 else math.inf
    if not math.isfinite(beats):
        return MAX_MISSED_BEATS if beats > 0 else 0
    return min(MAX_MISSED_BEATS, max(0, math.floor(beats - 0.5)))


def _unit(value: float) -> float:
    return min(1.0, max(0.0, value)) if math.isfinite(value) else 0.0
