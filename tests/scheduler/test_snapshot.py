"""The struct-of-arrays snapshot: classes, locations and cells, kept current incrementally."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import Snapshot
from tests.factories import BERLIN, PARIS, offer


def test_identical_hardware_tier_region_and_price_form_one_class() -> None:
    snap = Snapshot([offer(1), offer(2, at=PARIS), offer(3, price_usd_per_gpu_hour=0.6)])
    assert snap.classes == 2
    assert snap.class_count.tolist() == [2, 1]


def test_nodes_at_one_place_share_a_location_and_a_cell() -> None:
    snap = Snapshot([offer(1), offer(2), offer(3, network="5g")])
    assert snap.locations == 2
    assert snap.cells == 2
    assert sorted(snap.cell_count.tolist()) == [1, 2]


def test_rows_are_found_by_node_id_whatever_the_internal_order() -> None:
    snap = Snapshot([offer(30), offer(10, price_usd_per_gpu_hour=0.9), offer(20)])
    rows = snap.rows_of([10, 20, 30])
    assert snap.node_id[rows].tolist() == [10, 20, 30]


def test_blocked_nodes_look_full() -> None:
    snap = Snapshot([offer(1), offer(2)])
    snap.block([2])
    assert snap.gpus_free[snap.rows_of([2])].tolist() == [0]
    assert snap.gpus_free[snap.rows_of([1])].tolist() == [2]


def test_an_offline_node_shares_its_cell_but_has_no_free_gpus() -> None:
    snap = Snapshot([offer(1), offer(2, available=False)])
    assert snap.cells == 1 and snap.available[snap.rows_of([1, 2])].tolist() == [True, False]
    assert snap.gpus_free[snap.rows_of([1, 2])].tolist() == [2, 0]
    assert (snap.cell_free_sum.tolist(), snap.cell_free_max.tolist()) == ([2], [2])
    snap.set_free([1, 2], [1, 2])  # free GPUs in the database do not bring a node back
    assert snap.gpus_free[snap.rows_of([1, 2])].tolist() == [1, 0]
    assert (snap.cell_free_sum.tolist(), snap.cell_free_max.tolist()) == ([1], [1])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.booleans(), min_size=8, max_size=8),
    st.lists(st.integers(0, 4), min_size=8, max_size=8),
)
def test_cell_aggregates_stay_exact_whichever_nodes_are_offline(
    available: list[bool], refreshed: list[int]
) -> None:
    offers = [
        offer(i + 1, gpus_free=3, gpus_total=4, lat=BERLIN[0] + (i % 2), available=up)
        for i, up in enumerate(available)
    ]
    snap = Snapshot(offers)
    for _ in range(2):  # as built, then refreshed from the database
        assert np.all(snap.gpus_free[~snap.available] == 0)
        assert np.array_equal(
            snap.cell_free_max, np.maximum.reduceat(snap.gpus_free, snap.cell_start)
        )
        assert np.array_equal(snap.cell_free_sum, np.add.reduceat(snap.gpus_free, snap.cell_start))
        snap.set_free([o.node_id for o in offers], refreshed)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(1, 2), st.booleans()), max_size=40))
def test_cell_aggregates_stay_exact_under_takes_and_releases(
    ops: list[tuple[int, int, bool]],
) -> None:
    offers = [offer(i + 1, gpus_free=4, gpus_total=4, lat=BERLIN[0] + (i % 2)) for i in range(8)]
    snap = Snapshot(offers)
    for row, gpus, take in ops:
        if take and snap.gpus_free[row] >= gpus:
            snap.take(row, gpus)
        elif not take and snap.gpus_free[row] + gpus <= snap.gpus_total[row]:
            snap.release(row, gpus)
        assert np.array_equal(
            snap.cell_free_max, np.maximum.reduceat(snap.gpus_free, snap.cell_start)
        )
        assert np.array_equal(snap.cell_free_sum, np.add.reduceat(snap.gpus_free, snap.cell_start))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.integers(0, 7), st.integers(0, 2), max_size=8),  # row -> GPUs
            st.integers(0, 7),  # a row to release one GPU on afterwards
        ),
        max_size=10,
    )
)
def test_cell_aggregates_stay_exact_under_bulk_takes(
    batches: list[tuple[dict[int, int], int]],
) -> None:
    offers = [offer(i + 1, gpus_free=4, gpus_total=4, lat=BERLIN[0] + (i % 2)) for i in range(8)]
    snap = Snapshot(offers)
    for wanted, released in batches:
        takes = {r: g for r, g in wanted.items() if snap.gpus_free[r] >= g}
        before = snap.gpus_free.copy()
        snap.take_many(np.array(list(takes), np.int64), np.array(list(takes.values()), np.int32))
        for row, gpus in takes.items():
            assert snap.gpus_free[row] == before[row] - gpus
        if snap.gpus_free[released] < snap.gpus_total[released]:
            snap.release(released, 1)
        assert np.array_equal(
            snap.cell_free_max, np.maximum.reduceat(snap.gpus_free, snap.cell_start)
        )
        assert np.array_equal(snap.cell_free_sum, np.add.reduceat(snap.gpus_free, snap.cell_start))


def test_set_free_refreshes_capacity_from_the_database() -> None:
    snap = Snapshot([offer(1), offer(2)])
    snap.set_free([2, 1], [0, 1])
    assert snap.gpus_free[snap.rows_of([1, 2])].tolist() == [1, 0]
    assert snap.cell_free_max.max() == 1
