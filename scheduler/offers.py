"""What the scheduler sees of the supply: offers, and their struct-of-arrays snapshot.

The snapshot holds one row per node and one column per attribute. Nodes with
identical hardware, tier, region and price form a *class* (Nomad's computed
class): static constraints are checked once per class, not once per node.
Only ``gpus_free`` changes while the snapshot lives; ``take``/``release`` and
``set_free`` keep it current as allocations come and go, so a long-lived
scheduler never rebuilds the snapshot for capacity changes alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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


def _column(offers: Sequence[Offer], attr: str, dtype: type) -> np.ndarray:
    return np.fromiter((getattr(o, attr) for o in offers), dtype, len(offers))


def _codes(offers: Sequence[Offer], attr: str, table: dict[str, int]) -> np.ndarray:
    return np.fromiter((table.get(getattr(o, attr), -1) for o in offers), np.int16, len(offers))


class Snapshot:
    """Free capacity as a struct of arrays, with node classes for the static checks."""

    def __init__(self, offers: Sequence[Offer]) -> None:
        n = self.size = len(offers)
        self.offers = list(offers)
        self.node_id = _column(offers, "node_id", np.int64)
        self.model = _codes(offers, "gpu_model", MODEL_CODES)
        self.accelerator = _codes(offers, "accelerator", ACCELERATOR_CODES)
        self.tier = _codes(offers, "tier", TIER_CODES)
        self.network = _codes(offers, "network", NETWORK_CODES)
        self.gpus_free = _column(offers, "gpus_free", np.int32)
        self.gpus_total = np.fromiter(
            (o.gpus_free if o.gpus_total is None else o.gpus_total for o in offers), np.int32, n
        )
        self.vram_gib = _column(offers, "vram_gib", np.float64)
        self.price = _column(offers, "price_usd_per_gpu_hour", np.float64)
        self.inv_price = 1.0 / np.maximum(self.price, 1e-9)
        self.reliability = _column(offers, "reliability", np.float64)
        self.reliability_score = 100.0 * self.reliability
        self.rtt_bias_ms = _column(offers, "rtt_bias_ms", np.float64)
        self.biased_rows = np.flatnonzero(self.rtt_bias_ms != 0.0)
        self.access_rtt_ms = ACCESS_RTT_BY_CODE[np.maximum(self.network, 0)] if n else np.zeros(0)
        self.xyz = unit_vectors(
            _column(offers, "lat", np.float64), _column(offers, "lon", np.float64)
        )
        self.xyz = self.xyz.reshape(n, 3)
        self.regions: list[str] = sorted({o.region for o in offers})
        region_codes = {r: i for i, r in enumerate(self.regions)}
        self.region = np.fromiter((region_codes[o.region] for o in offers), np.int32, n)
        self._build_classes()
        order = np.argsort(self.node_id, kind="stable")
        self._sorted_ids, self._sorted_rows = self.node_id[order], order

    def _build_classes(self) -> None:
        """Group nodes by (model, accelerator, vram, GPUs, tier, region, price)."""
        keys = np.rec.fromarrays(
            [
                self.model,
                self.accelerator,
                self.vram_gib,
                self.gpus_total,
                self.tier,
                self.region,
                self.price,
            ],
            names="model,accel,vram,gpus,tier,region,price",
        )
        if self.size:
            uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        else:
            uniq, first, inverse = keys, np.zeros(0, np.int64), np.zeros(0, np.int64)
        self.node_class = inverse.astype(np.int32).reshape(-1)
        self.classes = len(uniq)
        self.class_count = np.bincount(self.node_class, minlength=self.classes)
        self.class_model = self.model[first]
        self.class_accelerator = self.accelerator[first]
        self.class_vram_gib = self.vram_gib[first]
        self.class_gpus_total = self.gpus_total[first]
        self.class_tier = self.tier[first]
        self.class_region = self.region[first]
        self.class_price = self.price[first]
        # CSR index: the rows of class c are _class_order[_class_offsets[c]:_class_offsets[c + 1]].
        self._class_order = np.argsort(self.node_class, kind="stable")
        self._class_offsets = np.concatenate([[0], np.cumsum(self.class_count)])

    def class_rows(self, c: int) -> np.ndarray:
        return self._class_order[self._class_offsets[c] : self._class_offsets[c + 1]]

    # -- lookups ----------------------------------------------------------------------------
    def rows_of(self, node_ids: Iterable[int]) -> np.ndarray:
        """Row indices of ``node_ids`` (all must be in the snapshot)."""
        ids = np.asarray(list(node_ids), dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        if len(ids) and (pos.max() >= self.size or np.any(self._sorted_ids[pos] != ids)):
            raise KeyError("node id not in snapshot")
        return self._sorted_rows[pos]

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

    # -- the one column that changes -----------------------------------------------------------
    def take(self, row: int, gpus: int) -> None:
        """Book ``gpus`` on the node at ``row``; the caller checked they are free."""
        assert self.gpus_free[row] >= gpus, "plan booked more GPUs than a node has free"
        self.gpus_free[row] -= gpus

    def release(self, row: int, gpus: int) -> None:
        assert self.gpus_free[row] + gpus <= self.gpus_total[row], "released more than booked"
        self.gpus_free[row] += gpus

    def set_free(self, node_ids: Sequence[int], gpus_free: Sequence[int]) -> None:
        """Refresh free capacity from the database (nodes must already be in the snapshot)."""
        self.gpus_free[self.rows_of(node_ids)] = np.asarray(gpus_free, dtype=np.int32)

    def copy_free(self) -> np.ndarray:
        return self.gpus_free.copy()
