"""Processes for the concurrency and crash tests (spawned, so importable at module level)."""

from __future__ import annotations

import random
import sys
import time
from typing import Any

from depin.config import Settings
from depin.errors import CapacityError, InsufficientFundsError
from depin.manifest import Envelope
from depin.market import Marketplace


def _market(home: str, url: str) -> Marketplace:
    return Marketplace(Settings.from_env(home=home, database_url=url))


def place_jobs(
    home: str, url: str, attempts: list[tuple[int, int]], barrier: Any, results: Any
) -> None:
    """Try to place each (job, node); report how many succeeded and how each failure read."""
    market = _market(home, url)
    barrier.wait()
    ok, capacity, other = 0, 0, []
    for job_id, node_id in attempts:
        try:
            market.place(job_id, node_id)
            ok += 1
        except CapacityError:
            capacity += 1
        except Exception as exc:
            other.append(f"{type(exc).__name__}: {exc}")
    market.close()
    results.put((ok, capacity, other))


def submit_envelopes(home: str, url: str, envelopes: list[str], barrier: Any, results: Any) -> None:
    market = _market(home, url)
    barrier.wait()
    ok, short, other = 0, 0, []
    for text in envelopes:
        try:
            market.submit(Envelope.from_json(text))
            ok += 1
        except InsufficientFundsError:
            short += 1
        except Exception as exc:
            other.append(f"{type(exc).__name__}: {exc}")
    market.close()
    results.put((ok, short, other))


def schedule(home: str, url: str, cycles: int, barrier: Any, results: Any) -> None:
    """A scheduler (launching off) running ``cycles`` cycles against the shared database."""
    from depin.runtime.loop import Driver

    market = _market(home, url)
    driver = Driver(market, kind="racer", launch=False)
    barrier.wait()
    reserved, conflicts, other = 0, 0, []
    for _ in range(cycles):
        try:
            commit = driver.cycle().commit
            reserved += len(commit.reserved)
            conflicts += commit.conflicts
        except Exception as exc:
            other.append(f"{type(exc).__name__}: {exc}")
    market.close()
    results.put((reserved, conflicts, other))


def churn(home: str, url: str, seed: int) -> None:
    """A scheduler and a launcher in one loop, forever, until it is killed (SIGKILL)."""
    from depin.runtime.loop import Driver
    from tests.factories import ended, finish

    rng = random.Random(seed)
    market = _market(home, url)
    driver = Driver(market, kind="crashy", launch=False)
    while True:
        driver.cycle()
        launches = market.claim_reserved(driver.driver_id, limit=rng.randint(1, 5))
        for launch in launches:
            if rng.random() < 0.2:
                from datetime import UTC, datetime

                from depin.runtime.work import Outcome

                now = datetime.now(UTC)
                market.finish(
                    Outcome(launch.allocation_id, now, now, None, "", "node died", lost=True)
                )
            else:
                finish(market, ended(launch, rng.uniform(1, 120), exit_code=rng.choice([0, 0, 1])))
        time.sleep(rng.uniform(0, 0.02))


if __name__ == "__main__":
    churn(sys.argv[1], sys.argv[2], int(sys.argv[3]))
