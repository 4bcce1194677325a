"""Builders for test worlds: real keys, real accounts, real nodes, real signed jobs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from depin.client import Client
from depin.manifest import Envelope
from depin.runtime.work import CycleCommit, Launch, Outcome
from depin.spec import JobSpec, NodeSpec
from scheduler import Offer, plan

# Places as (lat, lon): real city centres, so distances and RTTs are the ones people expect.
BERLIN = (52.52, 13.405)
PARIS = (48.8566, 2.3522)
FRANKFURT = (50.11, 8.68)
NEW_YORK = (40.71, -74.0)
TOKYO = (35.69, 139.69)
SYDNEY = (-33.8688, 151.2093)


def near(*places: tuple[float, float]) -> list[dict[str, float]]:
    """A placement's ``near`` field: where the users are."""
    return [{"lat": lat, "lon": lon} for lat, lon in places]


def offer(node_id: int, *, at: tuple[float, float] = BERLIN, **overrides: Any) -> Offer:
    """The scheduler's view of one node: an RTX 4090 pair at the edge in Berlin, all GPUs free.

    ``gpus_total`` defaults to ``gpus_free``; give both to make a node busy.
    """
    fields: dict[str, Any] = {
        "node_id": node_id,
        "gpu_model": "RTX 4090",
        "gpus_free": 2,
        "vram_gib": 24.0,
        "price_usd_per_gpu_hour": 0.5,
        "lat": at[0],
        "lon": at[1],
        "tier": "edge",
        "region": "eu-central",
        "network": "fiber",
        "reliability": 0.99,
        "accelerator": "gpu",
    }
    fields.update(overrides)
    return Offer(**fields)


def node(provider: str = "acme", **overrides: Any) -> NodeSpec:
    fields: dict[str, Any] = {
        "provider": provider,
        "gpu_model": "RTX 4090",
        "gpus": 2,
        "price_usd_per_gpu_hour": Decimal("0.50"),
        "lat": BERLIN[0],
        "lon": BERLIN[1],
        "tier": "edge",
        "region": "eu-central",
        "network": "fiber",
        "reliability": 0.99,
    }
    fields.update(overrides)
    return NodeSpec.model_validate(fields)


def job(name: str = "hello", **overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "name": name,
        "command": ["python", "-c", "print('hello from the edge')"],
        "resources": {"gpus": 1},
        "max_duration_s": 600,
    }
    fields.update(overrides)
    return JobSpec.model_validate(fields)


@dataclass
class World:
    client: Client
    developer: str
    provider: str
    node_ids: dict[str, int]

    def sign(self, spec: JobSpec, **kwargs: Any) -> Envelope:
        return self.client.sign(spec, key=self.developer, account=self.developer, **kwargs)

    def submit(self, spec: JobSpec) -> int:
        return self.client.submit(spec, account=self.developer).id

    def available(self) -> int:
        return self.client.account(self.developer).balance.available

    def claimed(self, spec: JobSpec | None = None, *, at: datetime | None = None) -> Launch:
        """Submit ``spec`` (default: one L4 GPU for an hour), plan and reserve it, and claim it
        to launch (at ``at``, the start of what the market will pay for)."""
        self.submit(spec or job(resources={"gpus": 1, "gpu_models": ["L4"]}, max_duration_s=3600))
        self.cycle()
        return self.client.market.claim_reserved("test-driver", now=at)[0]  # type: ignore[attr-defined]

    def cycle(self) -> CycleCommit:
        """One scheduling cycle's plan and reservation, launched by nobody yet."""
        market = self.client.market
        work = market.pending_work()
        result = plan(work.specs, work.offers, keys=work.job_ids)
        return market.commit_plan(work, result, driver_id="test-driver")


def build_world(client: Client, *, deposit_usd: str = "100") -> World:
    client.new_key("acme")
    client.register_provider("acme", key="acme")
    ids = {
        "berlin-4090": client.add_node(node(name="berlin-4090")).id,
        "berlin-jetson": client.add_node(
            node(
                name="berlin-jetson",
                gpu_model="Jetson AGX Orin 64GB",
                gpus=1,
                price_usd_per_gpu_hour=Decimal("0.10"),
                tier="device",
                network="5g",
            )
        ).id,
        "frankfurt-a100": client.add_node(
            node(
                name="frankfurt-a100",
                gpu_model="A100-80GB",
                gpus=8,
                price_usd_per_gpu_hour=Decimal("1.20"),
                lat=FRANKFURT[0],
                lon=FRANKFURT[1],
                tier="regional",
                reliability=0.999,
            )
        ).id,
        "tokyo-l4": client.add_node(
            node(
                name="tokyo-l4",
                gpu_model="L4",
                gpus=4,
                price_usd_per_gpu_hour=Decimal("0.40"),
                lat=TOKYO[0],
                lon=TOKYO[1],
                region="ap-northeast",
            )
        ).id,
    }
    client.new_key("dev")
    client.create_account("dev", key="dev")
    client.deposit("dev", deposit_usd)
    return World(client, "dev", "acme", ids)


def ended(
    launch: Launch,
    seconds: float,
    exit_code: int | None = 0,
    output: str = "ok\n",
    *,
    start: datetime | None = None,
) -> Outcome:
    """How a node reports a finished allocation: the outcome and its provider's signed receipts,
    which claim a run of ``seconds`` from ``start`` (default: now)."""
    from depin.receipts import sign_acceptance, sign_usage

    start = start or datetime.now(UTC)
    end = start + timedelta(seconds=seconds)
    signer = launch.receipts
    assert signer is not None
    private = signer.private_key()
    assert private is not None, "the provider's key must be in the test's DEPIN_HOME"
    acceptance = sign_acceptance(private, signer.facts, at=start).to_json()
    usage = sign_usage(private, signer.facts, started_at=start, ended_at=end, exit_code=exit_code)
    return Outcome(
        launch.allocation_id,
        start,
        end,
        exit_code,
        output,
        acceptance_json=acceptance,
        usage_json=usage.to_json(),
    )


def finish(market: Any, outcome: Outcome) -> None:
    """Hand an outcome to the market as it arrives when its run ends: the market pays for
    what the receipt claims only within what it saw, from the claim to this moment."""
    market.finish(outcome, now=outcome.ended_at)
