"""Many processes against one database: capacity and money are never double-spent.

Runs on a SQLite file and, when configured, on PostgreSQL. On SQLite the
writers queue behind ``BEGIN IMMEDIATE``; none may fail with "database is
locked".
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from depin.client import Client
from depin.db.models import Allocation, utcnow
from tests.factories import build_world, job, node

PROCESSES = 8


def _run(target, per_process: list, home: Path, url: str) -> list[tuple]:  # type: ignore[no-untyped-def,type-arg]
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(len(per_process)), ctx.Queue()
    procs = [
        ctx.Process(target=target, args=(str(home), url, work, barrier, results))
        for work in per_process
    ]
    for p in procs:
        p.start()
    out = [results.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return out


def test_a_thousand_allocation_attempts_on_a_hundred_gpus_book_exactly_a_hundred(
    client: Client, database_url: str, home: Path
) -> None:
    world = build_world(client, deposit_usd="100000")
    nodes = [client.add_node(node(name=f"pool-{i}", gpus=10, gpu_model="L4")).id for i in range(10)]
    jobs = client.submit_many(
        [job(f"j{i}", resources={"gpus": 1, "gpu_models": ["L4"]}) for i in range(1000)],
        account=world.developer,
    )
    attempts = [(j, nodes[i % len(nodes)]) for i, j in enumerate(jobs)]
    random.Random(1).shuffle(attempts)
    results = _run(
        __import__("tests.workers", fromlist=["place_jobs"]).place_jobs,
        [attempts[i::PROCESSES] for i in range(PROCESSES)],
        home,
        database_url,
    )
    assert sum(r[0] for r in results) == 100
    assert sum(r[1] for r in results) == 900
    assert [e for r in results for e in r[2]] == []  # no other error, "database is locked" included
    free = {n.id: n.gpus_free for n in client.nodes()}
    assert all(free[n] == 0 for n in nodes)
    report = client.verify_ledger()
    assert report.ok, report.problems


def test_submissions_racing_for_a_balance_that_covers_n_holds_accept_exactly_n(
    client: Client, database_url: str, home: Path
) -> None:
    world = build_world(client, deposit_usd="25")  # each hold below is $1.00: 25 fit
    spec = job(
        resources={"gpus": 1, "gpu_models": ["L4"]},
        pricing={"max_usd_per_gpu_hour": "1.00"},
        max_duration_s=3600,
    )
    envelopes = [
        world.sign(spec.model_copy(update={"name": f"j{i}"}), ttl_s=600).to_json()
        for i in range(80)
    ]
    results = _run(
        __import__("tests.workers", fromlist=["submit_envelopes"]).submit_envelopes,
        [envelopes[i::PROCESSES] for i in range(PROCESSES)],
        home,
        database_url,
    )
    assert sum(r[0] for r in results) == 25
    assert sum(r[1] for r in results) == 55
    assert [e for r in results for e in r[2]] == []
    assert world.available() == 0
    assert client.verify_ledger().ok


def test_schedulers_racing_over_one_database_never_book_a_gpu_twice(
    client: Client, database_url: str, home: Path
) -> None:
    world = build_world(client, deposit_usd="100000")
    pool = [client.add_node(node(name=f"pool-{i}", gpus=10, gpu_model="T4")).id for i in range(10)]
    client.submit_many(
        [job(f"r{i}", resources={"gpus": 1, "gpu_models": ["T4"]}) for i in range(250)],
        account=world.developer,
    )
    results = _run(
        __import__("tests.workers", fromlist=["schedule"]).schedule,
        [4] * PROCESSES,
        home,
        database_url,
    )
    assert [e for r in results for e in r[2]] == []
    booked = sum(r[0] for r in results)
    assert 0 < booked <= 100
    # Whatever a race left unbooked, the next cycle books: capacity is never lost either.
    from depin.runtime.loop import Driver

    booked += len(Driver(client.market, launch=False).cycle().commit.reserved)
    assert booked == 100
    with client.market.sessions() as s:
        booked_nodes = s.scalars(select(Allocation.node_id).where(Allocation.state == "reserved"))
        assert sorted(booked_nodes) == sorted(pool * 10)
    assert all(n.gpus_free == 0 for n in client.nodes() if n.id in pool)
    assert len(client.jobs(state="pending", limit=1000)) == 150
    report = client.verify_ledger()
    assert report.ok, report.problems


@pytest.mark.parametrize("kills", [6])
def test_killing_a_scheduler_at_random_points_loses_no_money_and_books_no_gpu_twice(
    client: Client, database_url: str, home: Path, kills: int
) -> None:
    world = build_world(client, deposit_usd="100000")
    for i in range(kills):
        client.submit_many(
            [job(f"k{i}-{n}", resources={"gpus": 1}) for n in range(40)], account=world.developer
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.workers", str(home), database_url, str(i)],
            env=os.environ | {"DEPIN_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(random.Random(i).uniform(2.0, 4.0))
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        # The next scheduler to start reconciles: the dead driver's work is requeued.
        client.market.reconcile(now=utcnow() + timedelta(minutes=5))
        report = client.verify_ledger()
        assert report.ok, report.problems
        # Nothing is left running under the dead driver; reservations made for any launcher
        # (this scheduler ran with launching off) wait for one, their money still held.
        assert [j.id for j in client.jobs(limit=10_000) if j.state == "running"] == []
    assert world.client.account("acme").balance.credits_posted > 0  # work got done and paid
