"""What passes between the Marketplace and an executor: launches out, outcomes back."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from depin.receipts import ReceiptSigner


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
    """How an allocation ended: an exit code, or ``lost`` when its node or worker died."""

    allocation_id: int
    started_at: datetime
    ended_at: datetime
    exit_code: int | None
    output_tail: str
    error: str | None = None
    lost: bool = False
    acceptance_json: str | None = None  # the provider's signed receipts, as the node sent them
    usage_json: str | None = None

    @property
    def succeeded(self) -> bool:
        return not self.lost and self.exit_code == 0

    @property
    def duration_ms(self) -> int:
        return max(0, int((self.ended_at - self.started_at).total_seconds() * 1000))
