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
from depin.manifest import CLOCK_SKEW_S
from depin.money import micro_to_usd, usd_to_micro
from depin.spec import NodeSpec
from scheduler.offers import Offer

# A node whose agent has heartbeated before, but not for this long, is offline.
HEARTBEAT_TIMEOUT_S = 60


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


def heartbeat(session: Session, node_id: int, *, now: datetime | None = None) -> None:
    """Record that the node's agent is alive; an offline node comes back."""
    node = get_node(session, node_id)
    came_back = node.status == "offline"
    session.execute(
        update(Node)
        .where(Node.id == node_id)
        .values(last_heartbeat_at=now or utcnow(), status="active")
    )
    if came_back:
        bump_version(session)


def mark_silent_nodes_offline(session: Session, *, now: datetime | None = None) -> list[int]:
    """Nodes whose agent stopped heartbeating go offline; returns their ids.

    Nodes that never heartbeated (registered without an agent, as in the
    embedded demo) are left alone.
    """
    cutoff = (now or utcnow()) - timedelta(seconds=HEARTBEAT_TIMEOUT_S)
    silent = list(
        session.execute(
            select(Node.id).where(
                Node.status == "active",
                Node.last_heartbeat_at.is_not(None),
                Node.last_heartbeat_at < cutoff,
            )
        ).scalars()
    )
    if silent:
        session.execute(update(Node).where(Node.id.in_(silent)).values(status="offline"))
        bump_version(session)
    return silent


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
