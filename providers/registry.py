"""Providers' nodes in the database: register, heartbeat, liveness and free capacity.

Functions here work inside the caller's transaction (``depin.market`` owns
transactions); capacity only ever changes through ``take_capacity`` and
``release_capacity``, conditional updates that the nodes' CHECK backs up.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Integer, String, cast, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin.db.engine import executemany
from depin.db.models import AccountKey, Node, Setting, utcnow
from depin.errors import CapacityError, ConflictError, NotFoundError
from depin.keys import public_key_from_b64
from depin.limits import NODE_GRACE_S, NODE_TTL_S
from depin.manifest import CLOCK_SKEW_S
from depin.money import micro_to_usd, usd_to_micro
from depin.spec import NodeSpec
from providers import reliability
from scheduler.offers import Offer

# A node whose agent has heartbeated before, but not for this long, is offline.
HEARTBEAT_TIMEOUT_S = NODE_TTL_S + NODE_GRACE_S
RELIABILITY_STEP = 0.01


def _row(provider_id: int, spec: NodeSpec) -> dict[str, object]:
    return {
        "provider_id": provider_id,
        "name": spec.name,
        "gpu_model": spec.gpu_model,
        "accelerator": spec.accelerator,
        "gpus": spec.gpus,
        "gpus_free": spec.gpus,
        "vram_gib": spec.effective_vram_gib,
        "price_micro_usd_per_gpu_hour": usd_to_micro(spec.price_usd_per_gpu_hour),
        "lat": spec.lat,
        "lon": spec.lon,
        "tier": spec.tier,
        "region": spec.region,
        "network": spec.network,
        "reliability": spec.reliability,
        "declared_reliability": spec.reliability,
        "status": "active",
    }


def bump_version(session: Session) -> None:
    """Tell cached snapshots that the set of nodes or their static attributes changed."""
    session.execute(
        update(Setting)
        .where(Setting.key == "nodes_version")
        .values(value=cast(cast(Setting.value, Integer) + 1, String))
    )


def version(session: Session) -> int:
    return int(
        session.execute(select(Setting.value).where(Setting.key == "nodes_version")).scalar_one()
    )


def free_capacity(session: Session) -> tuple[list[int], list[int]]:
    """(node ids, free GPUs) of every active node: what a cached snapshot refreshes each cycle."""
    rows = session.execute(
        select(Node.id, Node.gpus_free).where(Node.status == "active").order_by(Node.id)
    ).all()
    return [r[0] for r in rows], [r[1] for r in rows]


def add_nodes(session: Session, provider_ids: dict[str, int], specs: list[NodeSpec]) -> list[int]:
    """Register many nodes in one INSERT; returns their ids in order."""
    try:
        with session.begin_nested():
            result = session.execute(
                insert(Node).returning(Node.id, sort_by_parameter_order=True),
                [_row(provider_ids[s.provider], s) | {"created_at": utcnow()} for s in specs],
            )
            ids = list(result.scalars().all())
        bump_version(session)
        return ids
    except IntegrityError as exc:
        raise ConflictError("two nodes of one provider share a name") from exc


def add_node(session: Session, provider_id: int, spec: NodeSpec) -> Node:
    """Register a node for a provider; all its GPUs start free."""
    node = Node(**_row(provider_id, spec))
    session.add(node)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError as exc:
        raise ConflictError(f"provider already has a node named {spec.name!r}") from exc
    bump_version(session)
    return node


def get_node(session: Session, node_id: int) -> Node:
    node = session.get(Node, node_id)
    if node is None:
        raise NotFoundError(f"no node with id {node_id}: see `depin node list`")
    return node


def list_nodes(session: Session, *, status: str | None = None) -> list[Node]:
    stmt = select(Node).order_by(Node.id)
    if status is not None:
        stmt = stmt.where(Node.status == status)
    return list(session.execute(stmt).scalars())


def heartbeat(
    session: Session,
    node_id: int,
    *,
    now: datetime | None = None,
    agent: str | None = None,
    simulated: bool | None = None,
    interval_s: float | None = None,
) -> Node:
    """Record that the node's agent is alive (an offline node comes back), how it serves the
    node, and the heartbeat in its uptime."""
    node = get_node(session, node_id)
    at = now or utcnow()
    values: dict[str, object] = {"last_heartbeat_at": at, "status": "active"}
    changed = node.status == "offline" or (agent is not None and agent != node.agent)
    if agent is not None:
        values["agent"] = agent
    if simulated is not None:
        values["simulated"] = simulated
    last = node.last_heartbeat_at
    gap_s = None if last is None else (at - last).total_seconds()
    # A beat sooner than half an interval after the last is no evidence of more uptime.
    if interval_s is not None and (gap_s is None or gap_s >= interval_s / 2):
        record = reliability.after_heartbeat(_record(node), gap_s=gap_s, interval_s=interval_s)
        values["uptime"] = record.uptime
        changed |= _set_reliability(values, node, record)
    session.execute(update(Node).where(Node.id == node_id).values(**values))
    if changed:
        bump_version(session)
    return node


def record_outcome(session: Session, node_id: int, *, node_fault: bool) -> None:
    """An allocation on the node ended: learn from it (``providers.reliability``)."""
    node = get_node(session, node_id)
    record = reliability.after_outcome(_record(node), node_fault=node_fault)
    values: dict[str, object] = {"outcomes_good": record.good, "outcomes_bad": record.bad}
    if _set_reliability(values, node, record):
        bump_version(session)
    session.execute(update(Node).where(Node.id == node_id).values(**values))


def _record(node: Node) -> reliability.Record:
    return reliability.Record(
        node.declared_reliability, node.outcomes_good, node.outcomes_bad, node.uptime
    )


def _set_reliability(values: dict[str, object], node: Node, record: reliability.Record) -> bool:
    """Store the learned reliability; True when it moved enough for the scheduler's cached
    snapshot to be rebuilt (a hundredth: finer moves wait for the next rebuild)."""
    learned = round(record.reliability, 4)
    values["reliability"] = learned
    return abs(learned - node.reliability) >= RELIABILITY_STEP


def mark_silent_nodes_offline(
    session: Session, *, now: datetime | None = None, timeout_s: float = HEARTBEAT_TIMEOUT_S
) -> list[int]:
    """Nodes whose agent stopped heartbeating for ``timeout_s`` go offline; returns their ids.

    Nodes that never heartbeated (registered without an agent, as in the
    embedded demo) are left alone.
    """
    silent = silent_nodes(session, now=now, timeout_s=timeout_s)
    if silent:
        session.execute(update(Node).where(Node.id.in_(silent)).values(status="offline"))
        bump_version(session)
    return silent


def set_status(session: Session, node_id: int, status: str) -> None:
    session.execute(update(Node).where(Node.id == node_id).values(status=status))
    bump_version(session)


def silent_nodes(
    session: Session, *, now: datetime | None = None, timeout_s: float = HEARTBEAT_TIMEOUT_S
) -> list[int]:
    """Active nodes whose agent has heartbeated before, but not for ``timeout_s``."""
    cutoff = (now or utcnow()) - timedelta(seconds=timeout_s)
    return list(
        session.execute(
            select(Node.id).where(
                Node.status == "active",
                Node.last_heartbeat_at.is_not(None),
                Node.last_heartbeat_at < cutoff,
            )
        ).scalars()
    )


def agent_nodes(session: Session, mode: str) -> frozenset[int]:
    """Nodes whose agents serve them in ``mode``: "pull" (no Ray driver launches on them),
    or "ray" (their raylets joined the operator's cluster)."""
    return frozenset(session.execute(select(Node.id).where(Node.agent == mode)).scalars())


_TAKE = (
    "UPDATE nodes SET gpus_free = gpus_free - ? WHERE id = ? AND status = 'active' "
    "AND gpus_free >= ? AND price_micro_usd_per_gpu_hour = ?"
)


def take_capacity(session: Session, takes: list[tuple[int, int, int]]) -> bool:
    """Book (node id, GPUs, price the plan saw) on active nodes, one statement for all;
    False if any came up short (the caller rolls back what the others took)."""
    rows = [(gpus, node_id, gpus, price) for node_id, gpus, price in takes]
    return executemany(session, _TAKE, rows) == len(rows)


def release_capacity(session: Session, node_id: int, gpus: int) -> None:
    """Give booked GPUs back; giving back more than was booked is a bug, never silent."""
    result = session.execute(
        update(Node)
        .where(Node.id == node_id, Node.gpus_free + gpus <= Node.gpus)
        .values(gpus_free=Node.gpus_free + gpus)
    )
    if result.rowcount != 1:
        raise CapacityError(f"node {node_id} cannot take back {gpus} GPU(s): more than it booked")


def to_offer(node: Node, *, full: bool = False) -> Offer:
    """The scheduler's view of a node; ``full`` pretends every GPU is free. A node that is
    not active (offline, draining) is offered as unavailable, with no GPUs free."""
    available = node.status == "active"
    return Offer(
        node_id=node.id,
        gpu_model=node.gpu_model,
        gpus_free=0 if not available else node.gpus if full else node.gpus_free,
        vram_gib=node.vram_gib,
        price_usd_per_gpu_hour=float(micro_to_usd(node.price_micro_usd_per_gpu_hour)),
        lat=node.lat,
        lon=node.lon,
        tier=node.tier,
        region=node.region,
        network=node.network,
        reliability=node.reliability,
        accelerator=node.accelerator,
        gpus_total=node.gpus,
        rtt_bias_ms=node.rtt_bias_ms,
        available=available,
    )


def offers(session: Session, *, full: bool = False) -> list[Offer]:
    """Every registered node as an offer, busy or not, up or not: a job that only offline
    nodes fit waits for them, where leaving them out would refuse it as unschedulable."""
    return offers_and_prices(session, full=full)[0]


def offers_and_prices(
    session: Session, *, full: bool = False
) -> tuple[list[Offer], dict[int, int]]:
    """``offers``, and each node's exact price in micro-USD (what a reservation re-checks)."""
    nodes = list_nodes(session)
    return [to_offer(n, full=full) for n in nodes], {
        n.id: n.price_micro_usd_per_gpu_hour for n in nodes
    }


def provider_keys(
    session: Session,
    node_ids: Sequence[int] | None,
    *,
    active_only: bool,
    now: datetime | None = None,
) -> dict[int, dict[str, Ed25519PublicKey]]:
    """The public keys of the providers that own ``node_ids`` (None: every node), in one
    query: node id -> key id -> public key. ``active_only``: the keys that may sign now (not
    revoked, within their validity, with the manifests' clock skew)."""
    stmt = select(Node.id, AccountKey.key_id, AccountKey.public_key).join(
        AccountKey, AccountKey.account_id == Node.provider_id
    )
    if node_ids is not None:
        stmt = stmt.where(Node.id.in_(sorted(set(node_ids))))
    if active_only:
        at, skew = now or utcnow(), timedelta(seconds=CLOCK_SKEW_S)
        stmt = stmt.where(
            AccountKey.state == "active",
            (AccountKey.not_after.is_(None)) | (AccountKey.not_after >= at - skew),
            (AccountKey.not_before.is_(None)) | (AccountKey.not_before <= at + skew),
        )
    out: dict[int, dict[str, Ed25519PublicKey]] = {}
    for node_id, key_id, public in session.execute(stmt):
        out.setdefault(node_id, {})[key_id] = public_key_from_b64(public)
    return out
