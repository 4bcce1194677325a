"""Read models: what the Marketplace returns to the SDK, the CLI and the HTTP API.

Plain frozen dataclasses with ``to_dict`` for ``--json``. Money is exact:
integer micro-USD (``*_micro_usd``); prices are also given in USD per GPU-hour
because that is how people write them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from depin.db.models import JOB_TERMINAL_STATES, AccountKey, Allocation, Job, Node
from depin.ledger import Balance
from depin.money import micro_to_usd


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _price_usd(micro: int) -> float:
    return float(micro_to_usd(micro))


@dataclass(frozen=True, slots=True)
class AccountView:
    id: int
    name: str
    kind: str
    key_ids: list[str]
    balance: Balance

    def to_dict(self) -> dict[str, Any]:
        b = self.balance
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "key_ids": list(self.key_ids),
            "available_micro_usd": b.available,
            "posted_micro_usd": b.posted,
            "held_micro_usd": b.debits_pending,
        }


@dataclass(frozen=True, slots=True)
class KeyView:
    """A registered public key: whose it is, and whether it may sign."""

    key_id: str
    account: str
    state: str
    public_key: str
    created_at: str | None
    not_before: str | None
    not_after: str | None
    revoked_at: str | None

    @classmethod
    def of(cls, key: AccountKey, account: str) -> KeyView:
        return cls(
            key.key_id,
            account,
            key.state,
            key.public_key,
            _iso(key.created_at),
            _iso(key.not_before),
            _iso(key.not_after),
            _iso(key.revoked_at),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class NodeView:
    id: int
    provider: str
    name: str | None
    gpu_model: str
    accelerator: str
    gpus: int
    gpus_free: int
    vram_gib: float
    price_micro_usd_per_gpu_hour: int
    lat: float
    lon: float
    tier: str
    region: str
    network: str
    reliability: float
    status: str
    last_heartbeat_at: str | None

    @property
    def price_usd_per_gpu_hour(self) -> float:
        return _price_usd(self.price_micro_usd_per_gpu_hour)

    @classmethod
    def of(cls, node: Node, provider: str) -> NodeView:
        return cls(
            id=node.id,
            provider=provider,
            name=node.name,
            gpu_model=node.gpu_model,
            accelerator=node.accelerator,
            gpus=node.gpus,
            gpus_free=node.gpus_free,
            vram_gib=node.vram_gib,
            price_micro_usd_per_gpu_hour=node.price_micro_usd_per_gpu_hour,
            lat=node.lat,
            lon=node.lon,
            tier=node.tier,
            region=node.region,
            network=node.network,
            reliability=node.reliability,
            status=node.status,
            last_heartbeat_at=_iso(node.last_heartbeat_at),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"price_usd_per_gpu_hour": self.price_usd_per_gpu_hour}


@dataclass(frozen=True, slots=True)
class AllocationView:
    id: int
    node_id: int
    gpus: int
    price_micro_usd_per_gpu_hour: int
    time_limit_s: int
    rtt_ms: float | None
    score: float
    state: str
    created_at: str | None
    started_at: str | None
    ended_at: str | None
    exit_code: int | None
    cost_micro_usd: int | None
    output_tail: str | None
    error: str | None

    @property
    def price_usd_per_gpu_hour(self) -> float:
        return _price_usd(self.price_micro_usd_per_gpu_hour)

    @classmethod
    def of(cls, a: Allocation) -> AllocationView:
        return cls(
            id=a.id,
            node_id=a.node_id,
            gpus=a.gpus,
            price_micro_usd_per_gpu_hour=a.price_micro_usd_per_gpu_hour,
            time_limit_s=a.time_limit_s,
            rtt_ms=a.rtt_ms,
            score=a.score,
            state=a.state,
            created_at=_iso(a.created_at),
            started_at=_iso(a.started_at),
            ended_at=_iso(a.ended_at),
            exit_code=a.exit_code,
            cost_micro_usd=a.cost_micro_usd,
            output_tail=a.output_tail,
            error=a.error,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"price_usd_per_gpu_hour": self.price_usd_per_gpu_hour}


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    name: str
    account: str
    key_id: str
    state: str
    manifest_digest: str
    max_cost_micro_usd: int
    created_at: str | None
    ended_at: str | None
    spec: dict[str, Any]
    allocations: list[AllocationView] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in JOB_TERMINAL_STATES

    @property
    def allocation(self) -> AllocationView | None:
        """The latest allocation, if the job was ever placed."""
        return self.allocations[-1] if self.allocations else None

    @classmethod
    def of(
        cls,
        job: Job,
        account: str,
        spec_json: str,
        allocations: list[Allocation],
        plan_reasons: list[str] | None = None,
    ) -> JobView:
        return cls(
            id=job.id,
            name=job.name,
            account=account,
            key_id=job.key_id,
            state=job.state,
            manifest_digest=job.manifest_digest,
            max_cost_micro_usd=job.max_cost_micro_usd,
            created_at=_iso(job.created_at),
            ended_at=_iso(job.ended_at),
            spec=json.loads(spec_json),
            allocations=[AllocationView.of(a) for a in allocations],
            reasons=(json.loads(job.reasons_json) if job.reasons_json else [])
            + (plan_reasons or []),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["allocations"] = [a.to_dict() for a in self.allocations]
        return data
