"""What the scheduler sees of the supply: offers, and their struct-of-arrays snapshot."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from depin.spec import NETWORKS, TIERS
from providers.catalog import ACCELERATOR_KINDS, model_names
from scheduler.latency import ACCESS_RTT_MS, unit_vectors


@dataclass(frozen=True, slots=True)
class Offer:
    """Free capacity on one node, as the scheduler sees it."""

    node_id: int
    gpu_model: str
    gpus_free: int
    vram_gib: float
    price_usd_per_gpu_hour: float
    lat: float
    lon: float
    tier: str
    region: str
    network: str
    reliability: float
    accelerator: str
    gpus_total: int | None = None  # None: same as gpus_free
    rtt_bias_ms: float = 0.0  # measured RTT minus the model's estimate, when probed


MODEL_CODES: dict[str, int] = {name: i for i, name in enumerate(model_names())}
ACCELERATOR_CODES: dict[str, int] = {k: i for i, k in enumerate(ACCELERATOR_KINDS)}
TIER_CODES: dict[str, int] = {t: i for i, t in enumerate(TIERS)}
NETWORK_CODES: dict[str, int] = {n: i for i, n in enumerate(NETWORKS)}
ACCESS_RTT_BY_CODE = np.array([ACCESS_RTT_MS[n] for n in NETWORKS], dtype=np.float64)


class Snapshot:
    """Free capacity as a struct of arrays: one row per node, one column per attribute.

    ``gpus_free`` is the only column that changes while planning; ``take``
    updates it in place so a batch never books more than a node has.
    """

    def __init__(self, offers: Sequence[Offer]) -> None:
        n = len(offers)
        self.size = n
        self.node_id = np.fromiter((o.node_id for o in offers), np.int64, n)
        self.model = np.fromiter((MODEL_CODES.get(o.gpu_model, -1) for o in offers), np.int16, n)
        self.accelerator = np.fromiter(
            (ACCELERATOR_CODES.get(o.accelerator, -1) for o in offers), np.int8, n
        )
        self.gpus_free = np.fromiter((o.gpus_free for o in offers), np.int32, n)
        self.gpus_total = np.fromiter(
            (o.gpus_free if o.gpus_total is None else o.gpus_total for o in offers), np.int32, n
        )
        self.vram_gib = np.fromiter((o.vram_gib for o in offers), np.float64, n)
        self.price = np.fromiter((o.price_usd_per_gpu_hour for o in offers), np.float64, n)
        lat = np.fromiter((o.lat for o in offers), np.float64, n)
        lon = np.fromiter((o.lon for o in offers), np.float64, n)
        self.xyz = unit_vectors(lat, lon).reshape(n, 3)
        self.tier = np.fromiter((TIER_CODES.get(o.tier, -1) for o in offers), np.int8, n)
        self.regions: list[str] = sorted({o.region for o in offers})
        region_codes = {r: i for i, r in enumerate(self.regions)}
        self.region = np.fromiter((region_codes[o.region] for o in offers), np.int32, n)
        self.network = np.fromiter((NETWORK_CODES.get(o.network, 0) for o in offers), np.int8, n)
        self.access_rtt_ms = ACCESS_RTT_BY_CODE[self.network] if n else np.zeros(0)
        self.reliability = np.fromiter((o.reliability for o in offers), np.float64, n)
        self.rtt_bias_ms = np.fromiter((o.rtt_bias_ms for o in offers), np.float64, n)
        self.offers = list(offers)
        self.row_of: dict[int, int] = {int(node): i for i, node in enumerate(self.node_id)}

    def region_codes_matching(self, wanted: Sequence[str]) -> np.ndarray:
        """Codes of snapshot regions equal to, or nested under, any wanted region.

        ``eu`` matches ``eu-central`` and ``eu-west``: residency rules name areas.
        """
        return np.array(
            [
                i
                for i, region in enumerate(self.regions)
                if any(region == w or region.startswith(w + "-") for w in wanted)
            ],
            dtype=np.int32,
        )

    def take(self, row: int, gpus: int) -> None:
        """Book ``gpus`` on the node at ``row``; the caller checked they are free."""
        assert self.gpus_free[row] >= gpus, "plan booked more GPUs than a node has free"
        self.gpus_free[row] -= gpus
