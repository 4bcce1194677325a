"""What the scheduler sees of the supply: offers, and their struct-of-arrays snapshot.

The snapshot holds one row per node and one column per attribute, grouped
three ways so that work is done at the coarsest level that decides it:

- a *class* is a set of nodes with identical hardware, tier, region and price
  (Nomad's computed class): static constraints are checked once per class;
- a *location* is a place, access network and RTT bias: latency is computed
  once per location (the nodes of one provider site share one);
- a *cell* is a class at a location. Rows are sorted by cell, so a cell's
  nodes are one contiguous range, and cells carry bounds (their best and
  worst reliability, their most free GPUs) that let the scorer skip whole
  cells that cannot hold a top candidate.

Registered nodes that are not available (offline, draining) are rows like
any other, with no free GPUs: they share classes and cells with the rest, the
static checks count them (a job they fit waits for them), placement never
uses them.

Only free GPUs change while the snapshot lives: ``take``/``take_many``/
``release`` and ``set_free`` keep the rows and the cells' aggregates current
as allocations come and go, so a long-lived scheduler never rebuilds it for
capacity alone; ``plan()`` books on a ``scratch`` copy and leaves it as it
was. Things derived from the fixed columns may be cached on it (each latency
budget's location thresholds).
"""

from __future__ import annotations

import copy
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
    # False: registered but offline or draining. Such a node takes no work (the snapshot
    # gives it no free GPUs), yet it counts as fitting: a job that only it fits waits for it.
    available: bool = True


MODEL_CODES: dict[str, int] = {name: i for i, name in enumerate(model_names())}
ACCELERATOR_CODES: dict[str, int] = {k: i for i, k in enumerate(ACCELERATOR_KINDS)}
TIER_CODES: dict[str, int] = {t: i for i, t in enumerate(TIERS)}
NETWORK_CODES: dict[str, int] = {n: i for i, n in enumerate(NETWORKS)}
ACCESS_RTT_BY_CODE = np.array([ACCESS_RTT_MS[n] for n in NETWORKS], dtype=np.float64)


def _column(offers: Sequence[Offer], attr: str, dtype: type) -> np.ndarray:
    return np.fromiter((getattr(o, attr) for o in offers), dtype, len(offers))


def _codes(offers: Sequence[Offer], attr: str, table: dict[str, int]) -> np.ndarray:
    return np.fromiter((table.get(getattr(o, attr), -1) for o in offers), np.int16, len(offers))


def _group(columns: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(group id per row, first row of each group) for rows equal in every column."""
    n = len(columns[0])
    if n == 0:
        return np.zeros(0, np.int32), np.zeros(0, np.int64)
    keys = np.rec.fromarrays(columns)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    return inverse.astype(np.int32).reshape(-1), first


def ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(s, s + c)`` for each (s, c), vectorized."""
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    return np.arange(total) + np.repeat(starts - (ends - counts), counts)


class Snapshot:
    """Free capacity as a struct of arrays, grouped into classes, locations and cells."""

    def __init__(self, offers: Sequence[Offer]) -> None:
        n = self.size = len(offers)
        gpus_total = np.fromiter(
            (o.gpus_free if o.gpus_total is None else o.gpus_total for o in offers), np.int32, n
        )
        regions = sorted({o.region for o in offers})
        region_codes = {r: i for i, r in enumerate(regions)}
        raw = {
            "node_id": _column(offers, "node_id", np.int64),
            "model": _codes(offers, "gpu_model", MODEL_CODES),
            "accelerator": _codes(offers, "accelerator", ACCELERATOR_CODES),
            "tier": _codes(offers, "tier", TIER_CODES),
            "network": _codes(offers, "network", NETWORK_CODES),
            "region": np.fromiter((region_codes[o.region] for o in offers), np.int32, n),
            "available": _column(offers, "available", np.bool_),
            "gpus_free": _column(offers, "gpus_free", np.int32),
            "gpus_total": gpus_total,
            "vram_gib": _column(offers, "vram_gib", np.float64),
            "price": _column(offers, "price_usd_per_gpu_hour", np.float64),
            "reliability": _column(offers, "reliability", np.float64),
            "rtt_bias_ms": _column(offers, "rtt_bias_ms", np.float64),
            "lat": _column(offers, "lat", np.float64),
            "lon": _column(offers, "lon", np.float64),
        }
        node_class, _ = _group(
            [
                raw[k]
                for k in (
                    "model",
                    "accelerator",
                    "vram_gib",
                    "gpus_total",
                    "tier",
                    "region",
                    "price",
                )
            ]
        )
        node_location, _ = _group([raw[k] for k in ("lat", "lon", "network", "rtt_bias_ms")])
        # Rows sorted by cell (class, location), then node id: a cell is one contiguous range.
        order = (
            np.lexsort((raw["node_id"], node_location, node_class)) if n else np.zeros(0, np.int64)
        )
        # An unavailable node looks full, as a blocked one does: nothing lands there, and the
        # cell aggregates (computed from this column) count no room on it.
        raw["gpus_free"][~raw["available"]] = 0
        for name, column in raw.items():
            setattr(self, name, column[order])
        self.regions: list[str] = regions
        self.node_class = node_class[order] if n else node_class
        self.node_location = node_location[order] if n else node_location
        self.offers = [offers[i] for i in order]
        self._derive()
        self._build_classes()
        self._build_locations()
        self._build_cells()
        by_id = np.argsort(self.node_id, kind="stable")
        self._sorted_ids, self._sorted_rows = self.node_id[by_id], by_id

    # -- construction ---------------------------------------------------------------------------
    def _derive(self) -> None:
        # The cost scale: scores measure price against the dearest node in the market.
        self.price_ref = max(float(self.price.max()), 1e-9) if self.size else 1.0
        self.reliability_score = 100.0 * self.reliability
        self.access_rtt_ms = (
            ACCESS_RTT_BY_CODE[np.maximum(self.network, 0)] if self.size else np.zeros(0)
        )

    @staticmethod
    def _firsts(ids: np.ndarray, count: int) -> np.ndarray:
        """The first row of each group id 0..count-1."""
        _, first = np.unique(ids, return_index=True)
        assert len(first) == count
        return first

    def _build_classes(self) -> None:
        """Per class: its attributes and its number of nodes."""
        self.classes = int(self.node_class.max()) + 1 if self.size else 0
        first = self._firsts(self.node_class, self.classes)
        self.class_count = np.bincount(self.node_class, minlength=self.classes)
        self.class_model = self.model[first]
        self.class_accelerator = self.accelerator[first]
        self.class_vram_gib = self.vram_gib[first]
        self.class_gpus_total = self.gpus_total[first]
        self.class_tier = self.tier[first]
        self.class_region = self.region[first]
        self.class_price = self.price[first]

    def _build_locations(self) -> None:
        """Per location: its unit vector, access RTT and bias."""
        self.locations = int(self.node_location.max()) + 1 if self.size else 0
        first = self._firsts(self.node_location, self.locations)
        self.location_xyz = unit_vectors(self.lat[first], self.lon[first]).reshape(-1, 3)
        self.location_network = self.network[first]
        self.location_access_rtt_ms = self.access_rtt_ms[first]
        self.location_rtt_bias_ms = self.rtt_bias_ms[first]
        self.biased_locations = np.flatnonzero(self.location_rtt_bias_ms != 0.0)
        # Per latency budget: each location's reach threshold (feasibility.location_thresholds),
        # fixed as the locations are; a batch's request classes share a handful of budgets.
        self.thresholds_by_budget: dict[float, np.ndarray] = {}

    def _build_cells(self) -> None:
        """Cells are runs of equal (class, location) in the sorted rows."""
        if self.size:
            change = np.flatnonzero(
                (np.diff(self.node_class) != 0) | (np.diff(self.node_location) != 0)
            )
            self.cell_start = np.concatenate([[0], change + 1]).astype(np.int64)
        else:
            self.cell_start = np.zeros(0, dtype=np.int64)
        self.cells = len(self.cell_start)
        self.cell_count = np.diff(np.append(self.cell_start, self.size))
        self.node_cell = np.repeat(np.arange(self.cells, dtype=np.int32), self.cell_count)
        self.cell_class = self.node_class[self.cell_start]
        self.cell_location = self.node_location[self.cell_start]
        self.cell_price = self.price[self.cell_start]
        self.cell_reliability_max = self.reduce_cells(np.maximum, self.reliability_score)
        self.cell_reliability_min = self.reduce_cells(np.minimum, self.reliability_score)
        self._refresh_cells()

    def reduce_cells(self, ufunc: np.ufunc, column: np.ndarray) -> np.ndarray:
        """``ufunc`` over each cell's rows of a per-row ``column``."""
        return ufunc.reduceat(column, self.cell_start) if self.size else np.zeros(0, column.dtype)

    def _refresh_cells(self) -> None:
        self._cell_free_max = self.reduce_cells(np.maximum, self.gpus_free)
        self._stale_max: set[int] = set()
        self.cell_free_sum = self.reduce_cells(np.add, self.gpus_free).astype(np.int64)

    @property
    def cell_free_max(self) -> np.ndarray:
        """Per cell: the most GPUs free on one node (recomputed where takes made it stale)."""
        if self._stale_max:
            for cell in self._stale_max:
                start = self.cell_start[cell]
                self._cell_free_max[cell] = self.gpus_free[
                    start : start + self.cell_count[cell]
                ].max()
            self._stale_max.clear()
        return self._cell_free_max

    # -- lookups ----------------------------------------------------------------------------
    def cell_rows(self, cells: np.ndarray) -> np.ndarray:
        """Every row of the given cells."""
        return ranges(self.cell_start[cells], self.cell_count[cells])

    def rows_of(self, node_ids: Iterable[int]) -> np.ndarray:
        """Row indices of ``node_ids`` (all must be in the snapshot)."""
        ids = np.asarray(list(node_ids), dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        if len(ids) and (pos.max() >= self.size or np.any(self._sorted_ids[pos] != ids)):
            raise KeyError("node id not in snapshot")
        return self._sorted_rows[pos]

    def region_table(self, wanted: Sequence[str]) -> np.ndarray:
        """A lookup table over region codes: true for regions equal to, or under, a wanted one.

        ``eu`` matches ``eu-central`` and ``eu-west``: residency rules name areas.
        """
        return np.array(
            [any(r == w or r.startswith(w + "-") for w in wanted) for r in self.regions] + [False],
            dtype=bool,
        )

    # -- the one column that changes -----------------------------------------------------------
    def take(self, row: int, gpus: int) -> None:
        """Book ``gpus`` on the node at ``row``; the caller checked they are free."""
        free = int(self.gpus_free[row])
        assert free >= gpus, "plan booked more GPUs than a node has free"
        self.gpus_free[row] = free - gpus
        cell = int(self.node_cell[row])
        self.cell_free_sum[cell] -= gpus
        if free == self._cell_free_max[cell]:  # it may have been the cell's emptiest node
            self._stale_max.add(cell)

    def take_many(self, rows: np.ndarray, gpus: np.ndarray) -> None:
        """Book ``gpus[i]`` on the node at ``rows[i]`` (distinct rows); the caller checked."""
        before = self.gpus_free[rows]
        assert np.all(before >= gpus), "plan booked more GPUs than a node has free"
        self.gpus_free[rows] = before - gpus
        cells = self.node_cell[rows]
        np.subtract.at(self.cell_free_sum, cells, gpus)
        # A node that was its cell's emptiest may no longer be.
        self._stale_max.update(cells[(before == self._cell_free_max[cells]) & (gpus > 0)].tolist())

    def release(self, row: int, gpus: int) -> None:
        assert self.gpus_free[row] + gpus <= self.gpus_total[row], "released more than booked"
        self.gpus_free[row] += gpus
        cell = self.node_cell[row]
        self.cell_free_sum[cell] += gpus
        if cell not in self._stale_max:
            self._cell_free_max[cell] = max(self._cell_free_max[cell], self.gpus_free[row])

    def set_free(self, node_ids: Sequence[int], gpus_free: Sequence[int]) -> None:
        """Refresh free capacity from the database (nodes must already be in the snapshot);
        unavailable nodes keep none (a node's status changes rebuild the snapshot)."""
        rows = self.rows_of(node_ids)
        free = np.asarray(gpus_free, dtype=np.int32)
        self.gpus_free[rows] = np.where(self.available[rows], free, 0)
        self._refresh_cells()

    def block(self, node_ids: Sequence[int]) -> None:
        """Make nodes look full (Ray cannot reach them yet): jobs wait rather than land there."""
        if len(node_ids):
            self.gpus_free[self.rows_of(node_ids)] = 0
            self._refresh_cells()

    def scratch(self) -> Snapshot:
        """A snapshot to book on that leaves this one as it is: it shares every fixed column
        and cache, and owns copies of the free GPUs and their cell aggregates (O(nodes)
        copies: ~4 us for 10k nodes, where building a snapshot takes ~30 ms)."""
        other = copy.copy(self)
        other.gpus_free = self.gpus_free.copy()
        other.cell_free_sum = self.cell_free_sum.copy()
        other._cell_free_max = self._cell_free_max.copy()
        other._stale_max = set(self._stale_max)
        return other
