"""The one way a job ends: its final state, its reasons and the refund of what it still holds.

Every path that ends a job (its last allocation settles, it can never be
placed, its hold times out, it is lost and cannot be requeued) calls
``end_job`` inside the caller's transaction, under the ledger's lock.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from depin.db.models import Job, utcnow
from depin.ledger import Hold, Ledger
from depin.states import JobState


def end_job(
    ledger: Ledger,
    job: Job,
    state: JobState,
    reasons: Sequence[str] = (),
    *,
    refund: Hold | None = None,
) -> None:
    """End ``job`` in ``state`` (a terminal one), giving ``reasons`` and voiding ``refund``.

    The reasons replace the job's own (the scheduler's reasons live on its plan
    record); none leaves them as they were.
    """
    if not state.terminal:
        raise ValueError(f"{state} is not a state a job ends in")
    if refund is not None:
        why = f": {reasons[0]}" if reasons else ""
        ledger.void(refund, memo=f"job {job.id} {state}{why}"[:200])
    now = utcnow()
    job.state, job.ended_at, job.updated_at = state, now, now
    if reasons:
        job.reasons_json = json.dumps(list(reasons))
