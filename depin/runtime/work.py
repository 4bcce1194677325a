"""What passes between the market and the runtime: pending work out, a cycle's commit
back; launches out, outcomes back. Plain records, no database and no Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from depin.receipts import ReceiptSigner
from depin.spec import JobSpec
from scheduler import Offer


@dataclass(frozen=True, slots=True)
class PendingJob:
    """What reserving a pending job needs, read with the snapshot."""

    id: int
    account_id: int
    hold_id: int
    hold_micro: int
    spec: JobSpec


@dataclass(frozen=True, slots=True)
class PendingWork:
    """What one scheduling cycle reads: pending jobs, and the fleet or just its free GPUs.

    ``offers`` is None when the caller's cached snapshot is still current
    (``nodes_version`` unchanged): then only ``free`` (node ids, free GPUs) is read.
    """

    jobs: list[PendingJob]
    offers: list[Offer] | None
    price_micro: dict[int, int]  # node id -> price the plan saw, re-checked at reserve
    nodes_version: int = 0
    free: tuple[list[int], list[int]] | None = None
    pull_nodes: frozenset[int] = frozenset()  # nodes whose agents pull work (read with offers)
    ray_nodes: frozenset[int] = frozenset()  # nodes whose agents' raylets joined the cluster

    @property
    def job_ids(self) -> list[int]:
        return [j.id for j in self.jobs]

    @property
    def specs(self) -> list[JobSpec]:
        return [j.spec for j in self.jobs]


@dataclass(slots=True)
class CycleCommit:
    """What a cycle's reserve transaction did."""

    reserved: list[int] = field(default_factory=list)  # allocation ids
    unschedulable: list[int] = field(default_factory=list)  # job ids refused for good
    conflicts: int = 0  # jobs whose placement a concurrent scheduler took first


@dataclass(frozen=True, slots=True)
class Launch:
    """Start one allocation: run ``command`` on ``node_id`` within ``time_limit_s``."""

    allocation_id: int
    job_id: int
    job_name: str
    node_id: int
    gpus: int
    command: tuple[str, ...]
    time_limit_s: int
    receipts: ReceiptSigner | None = None  # how the node signs its acceptance and usage


@dataclass(frozen=True, slots=True)
class Outcome:
    """How an allocation ended: an exit code, or ``lost`` when its node or worker died.

    Everything in it but ``allocation_id`` is the node's word: settlement
    bounds it by what the market itself observed.
    """

    allocation_id: int
    started_at: datetime
    ended_at: datetime
    exit_code: int | None
    output_tail: str
    error: str | None = None
    lost: bool = False
    acceptance_json: str | None = None  # the provider's signed receipts, as the node sent them
    usage_json: str | None = None
    node_fault: bool = False  # the node could not run it (not the job's own failure)
    node_id: int | None = None  # where it ran, as the launcher knows it

    @property
    def succeeded(self) -> bool:
        return not self.lost and self.exit_code == 0

    @property
    def duration_ms(self) -> int:
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))
