"""What a node agent and the coordinator say to each other: one pydantic model per message.

    agent -> coordinator   NodeReport (heartbeat), Acceptance, LogChunk, Report
    coordinator -> agent   HeartbeatReply, WorkReply (the long-poll), Control

The coordinator's API and the agent's HTTP client share these definitions, and
the OpenAPI document shows them. Everything an agent sends is a stranger's word:
the models bound each field, and the market checks the rest (the fence token,
the receipts, what it saw itself).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from depin.limits import LOG_CHUNK_BYTES, OUTPUT_TAIL_CHARS
from depin.receipts import AllocationFacts

MAX_REPORTED = 1024  # allocation ids one heartbeat may list
MAX_ID = 2**63 - 1  # ids are signed 64-bit database keys
MAX_RECEIPT_CHARS = 16_384  # a DSSE receipt is well under 2 kB
FENCE_PATTERN = r"^[0-9a-f]{32}$"
Fence = Field(pattern=FENCE_PATTERN)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeReport(_Message):
    """A heartbeat: the agent is alive, what its machine has, and what it runs."""

    mode: Literal["pull", "ray"] = "pull"
    gpus: int = Field(ge=0, le=1024)  # what the machine has (or simulates)
    gpu_model: str | None = Field(default=None, max_length=64)
    simulated: bool = False
    interval_s: float = Field(ge=0.1, le=3600)  # how often it heartbeats
    running: list[Annotated[int, Field(ge=1, le=MAX_ID)]] = Field(
        default_factory=list, max_length=MAX_REPORTED
    )
    leaving: bool = False  # the agent is stopping: place nothing more here


class HeartbeatReply(_Message):
    """The node's standing, the coordinator's timing, and allocations to stop at once."""

    status: str
    ttl_s: float
    grace_s: float
    reliability: float
    stop: list[int] = Field(default_factory=list)


class Work(_Message):
    """An allocation reserved on the node: run it."""

    allocation_id: int
    job_id: int
    job_name: str
    command: list[str]
    gpus: int
    time_limit_s: int
    network: bool
    memory_gib: float | None
    fence: str
    facts: AllocationFacts  # what its receipts sign


class WorkReply(_Message):
    """The long-poll's answer: new work, and running allocations to stop (cancelled)."""

    work: list[Work] = Field(default_factory=list)
    stop: list[int] = Field(default_factory=list)


class Acceptance(_Message):
    """The agent takes an allocation: its provider's signed acceptance receipt."""

    fence: str = Fence
    acceptance_json: str = Field(max_length=MAX_RECEIPT_CHARS)


class LogChunk(_Message):
    """Output of a running allocation, as it was printed."""

    fence: str = Fence
    data: str = Field(max_length=LOG_CHUNK_BYTES)


class Control(_Message):
    """What the coordinator wants of a running allocation."""

    stop: bool = False


class Report(_Message):
    """How an allocation ended on the node, with the signed usage receipt.

    ``node_fault``: the node could not run it (the sandbox failed), as opposed to the
    job's own command failing; it counts against the node's reliability. ``lost``: the
    node gave it up before it ended (its agent stopped): unpaid, the job queued again.
    """

    fence: str = Fence
    exit_code: int | None = Field(default=None, ge=-255, le=255)
    output_tail: str = Field(default="", max_length=OUTPUT_TAIL_CHARS * 4)
    error: str | None = Field(default=None, max_length=2000)
    node_fault: bool = False
    lost: bool = False
    usage_json: str | None = Field(default=None, max_length=MAX_RECEIPT_CHARS)
