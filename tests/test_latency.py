"""The RTT model: access network + 2 x great-circle km x stretch / fibre speed."""

from __future__ import annotations

import numpy as np
import pytest

from scheduler.latency import (
    ACCESS_RTT_MS,
    FIBRE_KM_PER_MS,
    ROUTE_STRETCH,
    distance_km_from_dot,
    estimate_rtt_ms,
    great_circle_km,
    max_distance_km,
    min_dot_for_distance,
    rtt_ms,
    unit_vectors,
)
from tests.factories import BERLIN, PARIS, SYDNEY


def test_great_circle_distance_matches_known_city_pairs() -> None:
    assert great_circle_km(*BERLIN, *PARIS) == pytest.approx(878, rel=0.01)
    assert great_circle_km(*BERLIN, *SYDNEY) == pytest.approx(16_090, rel=0.01)
    assert great_circle_km(*BERLIN, *BERLIN) == 0


def test_rtt_is_access_plus_stretched_fibre_round_trip() -> None:
    expected = ACCESS_RTT_MS["fiber"] + 2 * 878 * ROUTE_STRETCH / FIBRE_KM_PER_MS
    assert estimate_rtt_ms(*BERLIN, *PARIS, "fiber") == pytest.approx(expected, rel=0.01)


def test_slower_access_networks_add_latency() -> None:
    assert rtt_ms(0, "fiber") < rtt_ms(0, "wifi") < rtt_ms(0, "5g") < rtt_ms(0, "lte")


def test_max_distance_inverts_the_rtt_model() -> None:
    for network in ACCESS_RTT_MS:
        d = max_distance_km(50, network)
        assert rtt_ms(d, network) == pytest.approx(50)


def test_a_budget_below_the_access_rtt_reaches_nothing() -> None:
    assert max_distance_km(5, "lte") < 0
    assert min_dot_for_distance(max_distance_km(5, "lte")) > 1.0


def test_dot_products_give_the_same_distances_as_haversine() -> None:
    xyz = unit_vectors([BERLIN[0], PARIS[0], SYDNEY[0]], [BERLIN[1], PARIS[1], SYDNEY[1]])
    dots = xyz @ xyz[0]
    np.testing.assert_allclose(
        distance_km_from_dot(dots),
        [0, great_circle_km(*BERLIN, *PARIS), great_circle_km(*BERLIN, *SYDNEY)],
        atol=0.5,
    )


def test_min_dot_is_monotone_in_distance() -> None:
    d = np.array([0.0, 10, 100, 1000, 10_000])
    dots = min_dot_for_distance(d)
    assert np.all(np.diff(dots) < 0)
