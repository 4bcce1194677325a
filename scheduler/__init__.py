"""Matching jobs to nodes by cost, locality and latency.

``plan`` is pure: specs and offers in, a ``Plan`` with reasons out.
"""

from scheduler.explain import Candidate, JobMetric
from scheduler.offers import Offer, Snapshot
from scheduler.plan import Admission, Assignment, Plan, admit, plan
from scheduler.status import Code, Status

__all__ = [
    "Admission",
    "Assignment",
    "Candidate",
    "Code",
    "JobMetric",
    "Offer",
    "Plan",
    "Snapshot",
    "Status",
    "admit",
    "plan",
]
