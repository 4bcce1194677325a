"""Why a job is not placed, and what happens next (Kubernetes' framework Status).

A status is a code with all its reasons: people read the reasons, callers act
on the code. A job left out either waits (nodes that fit are busy or offline,
and capacity may free) or will never run (no registered node could ever take
it: tell the user now, and return the hold).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Code(StrEnum):
    """What happens next to a job that is not placed."""

    WAITING = "waiting"  # retry later: the nodes that fit are busy or offline
    NEVER = "never"  # no registered node could ever take it: refuse it now


@dataclass(frozen=True, slots=True)
class Status:
    """A code, and every reason behind it."""

    code: Code
    reasons: tuple[str, ...] = ()
