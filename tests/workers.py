"""Processes for the concurrency and crash tests (spawned, so importable at module level)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

from depin.config import Settings
from depin.errors import CapacityError, InsufficientFundsError
from depin.manifest import Envelope
from depin.market import Marketplace


def _market(home: str, url: str) -> Marketplace:
    return Marketplace(Settings.from_env(home=home, database_url=url))


def _race(
    home: str,
    url: str,
    barrier: Any,
    results: Any,
    attempts: list[Callable[[Marketplace], object]],
    expected: type[Exception],
) -> None:
    """Run each attempt once all racers are ready; report (successes, expected refusals,
    any other failure as text)."""
    market = _market(home, url)
    barrier.wait()
    ok, refused, other = 0, 0, []
    for attempt in attempts:
        try:
            attempt(market)
            ok += 1
        except expected:
            refused += 1
        except Exception as exc:
            other.append(f"{type(exc).__name__}: {exc}")
    market.close()
    results.put((ok, refused, other))


def place_jobs(
    home: str, url: str, attempts: list[tuple[int, int]], barrier: Any, results: Any
) -> None:
    """Try to place each (job, node); report how many succeeded and how many found no room."""
    tries = [lambda m, j=j, n=n: m.place(j, n) for j, n in attempts]
    _race(home, url, barrier, results, tries, CapacityError)


def submit_envelopes(home: str, url: str, envelopes: list[str], barrier: Any, results: Any) -> None:
    """Submit each envelope; report how many were queued and how many the balance refused."""
    tries = [lambda m, t=t: m.submit(Envelope.from_json(t)) for t in envelopes]
    _race(home, url, barrier, results, tries, InsufficientFundsError)


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
