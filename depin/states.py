"""The states of a job and of an allocation, each one ``StrEnum``.

The models store them, the market moves them, the views and the CLI show
them; nothing spells a state as a bare string. The database's CHECK
constraints list the same values.

    job:        pending -> scheduled -> running -> succeeded | failed
                pending -> unschedulable | cancelled        (never placed)
                scheduled/running -> pending                (its node was lost)
    allocation: reserved -> running -> succeeded | failed | lost
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life."""

    PENDING = "pending"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNSCHEDULABLE = "unschedulable"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """The job has ended: nothing moves it any more."""
        return self in JOB_TERMINAL


class AllocationState(StrEnum):
    """Where one claim on a node's GPUs is: reserved, running, or how it ended."""

    RESERVED = "reserved"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"

    @property
    def active(self) -> bool:
        """It holds GPUs and money."""
        return self in ALLOCATION_ACTIVE


JOB_TERMINAL = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.UNSCHEDULABLE, JobState.CANCELLED}
)
ALLOCATION_ACTIVE = frozenset({AllocationState.RESERVED, AllocationState.RUNNING})
