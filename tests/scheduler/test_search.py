"""Market search ranks free capacity that meets the request."""

from __future__ import annotations

import pytest

from depin.spec import JobSpec
from scheduler import Snapshot
from scheduler.request import Request
from scheduler.search import search
from tests.factories import PARIS, near, offer


def request(**kw: object) -> Request:
    return Request.of(
        JobSpec.model_validate({"name": "s", "command": ["-"], "resources": {"gpus": 1}, **kw})
    )


MARKET = [
    offer(1, price_usd_per_gpu_hour=0.9),
    offer(2, price_usd_per_gpu_hour=0.3, at=PARIS),
    offer(3, price_usd_per_gpu_hour=0.5, gpus_free=0, gpus_total=2),
    offer(4, gpu_model="T4", vram_gib=16, price_usd_per_gpu_hour=0.2),
]


def test_search_sorts_by_price_and_skips_busy_nodes() -> None:
    hits = search(request(), Snapshot(MARKET), sort="price")
    assert [h.offer.node_id for h in hits] == [4, 2, 1]


def test_search_filters_like_the_scheduler() -> None:
    hits = search(request(resources={"gpus": 1, "vram_gib": 20}), Snapshot(MARKET))
    assert [h.offer.node_id for h in hits] == [2, 1]


def test_search_sorts_by_latency_from_the_users() -> None:
    req = request(placement={"near": near(PARIS)})
    hits = search(req, Snapshot(MARKET), sort="latency")
    assert hits[0].offer.node_id == 2 and hits[0].rtt_ms == pytest.approx(2.0)


def test_latency_sort_needs_users_and_the_limit_applies() -> None:
    with pytest.raises(ValueError, match="near"):
        search(request(), Snapshot(MARKET), sort="latency")
    assert len(search(request(), Snapshot(MARKET), limit=1)) == 1
