"""``depin serve`` as a person runs it: a real process, a real port, stopped by a signal.

Each server is ``python -m cli serve`` with a DEPIN_HOME of its own, in a process
group of its own, on a free loopback port; the test talks to it with
``depin.Client(url=...)`` from a DEPIN_HOME of the test's (with a copy of the
operator's key, which signs deposits), and stops it with SIGTERM: it must exit 0
within a few seconds, its scheduler loop stopped with it (retired from the
market's drivers).

Two servers on one PostgreSQL database, each with its own scheduler loop, take
50 concurrent clients' accounts, deposits, jobs and cancellations: no node has
more GPUs booked than it has, every placed job holds exactly what it asked
for, and the ledger verifies. Their loops run with ``--no-launch`` (reserve
only), which keeps Ray out; one test runs a job on Ray through a server.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, select

from depin.client import Client
from depin.config import Settings
from depin.db.models import Driver
from depin.errors import RateLimitedError
from depin.states import JobState
from depin.views import AllocationView, NodeView
from tests.factories import job, node

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0  # imports, migrations and uvicorn on a busy 2-core machine
STOP_TIMEOUT_S = 10.0  # SIGTERM to exit, the scheduler loop included
RAY_JOB_TIMEOUT_S = 90.0  # Ray starts in the server (seconds here, 10-20 s on 2 cores)
POLL_S = 0.1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Served:
    """One ``depin serve`` process."""

    home: Path
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"depin serve exited {self.process.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(POLL_S)
        pytest.fail(f"depin serve not ready in {READY_TIMEOUT_S} s:\n{self.output()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, float]:
        """Signal the server; its exit code and how long it took to exit."""
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"depin serve still running {STOP_TIMEOUT_S} s after {sig.name}")
        return code, time.monotonic() - started

    def kill(self) -> None:
        """Whatever is left of it, and of anything it started (its process group)."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def _serve_env(home: Path, database_url: str | None, ray_address: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPIN_", "RAY_ADDRESS"))}
    env["DEPIN_HOME"] = str(home)
    if database_url is not None:
        env["DEPIN_DATABASE_URL"] = database_url
    if ray_address is not None:
        env["RAY_ADDRESS"] = ray_address
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    return env


@contextmanager
def serving(
    home: Path,
    *args: str,
    database_url: str | None = None,
    ray_address: str | None = None,
    env: dict[str, str] | None = None,
) -> Iterator[Served]:
    """``depin serve --port <free> *args``, ready; killed on the way out if still running."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = home / "serve.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli", "serve", "--port", str(port), *args],
            cwd=REPO,
            env=_serve_env(home, database_url, ray_address) | (env or {}),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the test can end all of it
        )
    served = Served(home, f"http://127.0.0.1:{port}", process, log)
    try:
        served.wait_ready()
        yield served
    finally:
        served.kill()


def remote(served: Served, home: Path) -> Client:
    """A client of ``served`` from its own DEPIN_HOME, holding the operator's key (a copy)."""
    settings = Settings.from_env(home=home, api_url=served.url)
    settings.ensure_home()
    for path in (served.home / "keys").glob("operator.*"):
        shutil.copy2(path, settings.keys_dir / path.name)
    return Client(settings=settings)


def open_market(client: Client, developer: str = "dev") -> int:
    """A provider with one node, a funded developer and one job submitted; the job's id."""
    if "acme" not in {k.name for k in client.local_keys()}:
        client.new_key("acme")
    client.register_provider("acme", key="acme")
    client.add_node(node(name="berlin-4090"))
    client.new_key(developer)
    client.create_account(developer, key=developer)
    client.deposit(developer, "25")
    return client.submit(job(), account=developer).id


def scheduler_alive(served: Served) -> bool:
    """Whether a scheduler loop is heartbeating, read from the server's own database."""
    with Client(settings=Settings.from_env(home=served.home)) as local:
        return local.market.scheduler_running()


def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(POLL_S)


# -- one server ----------------------------------------------------------------------------
def test_serve_without_scheduler_takes_a_job_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with serving(tmp_path / "server", "--no-scheduler") as served:
        with remote(served, tmp_path / "client") as client:
            job_id = open_market(client)
            assert client.job(job_id).state is JobState.PENDING
            assert not client.market.scheduler_running()
            assert client.verify_ledger().ok
        code, took_s = served.stop()
    assert code == 0, served.output()
    assert took_s < STOP_TIMEOUT_S


def test_serve_with_its_scheduler_reserves_the_job_and_stops_on_sigterm(tmp_path: Path) -> None:
    # --no-launch: the loop plans and reserves (capacity and money) but never starts Ray.
    with serving(tmp_path / "server", "--no-launch") as served:
        with remote(served, tmp_path / "client") as client:
            wait_for(client.market.scheduler_running, READY_TIMEOUT_S, "the loop heartbeats")
            job_id = open_market(client)
            wait_for(
                lambda: client.job(job_id).state is JobState.SCHEDULED,
                READY_TIMEOUT_S,
                "the server's scheduler reserves the job",
            )
            assert client.verify_ledger().ok
        code, _ = served.stop()
    assert code == 0, served.output()
    assert not scheduler_alive(served)  # its loop retired itself on the way out


def test_serve_with_the_launching_scheduler_starts_ready_and_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    # The launching loop starts Ray only when it has an allocation to launch: with no job,
    # this is the loop's startup and shutdown inside the server, without Ray.
    with serving(tmp_path / "server") as served:
        with remote(served, tmp_path / "client") as client:
            wait_for(client.market.scheduler_running, READY_TIMEOUT_S, "the loop heartbeats")
        code, took_s = served.stop()
    assert code == 0, served.output()
    assert took_s < STOP_TIMEOUT_S
    assert not scheduler_alive(served)


def test_serve_stops_on_ctrl_c_too(tmp_path: Path) -> None:
    with serving(tmp_path / "server", "--no-launch") as served:
        code, _ = served.stop(signal.SIGINT)
    assert code == 0, served.output()


@pytest.mark.ray
def test_serve_runs_a_job_on_ray_and_stops_on_sigterm(tmp_path: Path) -> None:
    # The whole path in one server: its loop reserves, starts a Ray instance of its own
    # (RAY_ADDRESS=local: never another test's), runs the job and settles it. The node signs
    # receipts with its provider's key from the server's keys/, as in the embedded demo.
    with serving(tmp_path / "server", "--local-ray", ray_address="local") as served:
        with remote(served, tmp_path / "client") as client:
            client.new_key("acme")
            for path in client.settings.keys_dir.glob("acme.*"):
                shutil.copy2(path, served.home / "keys" / path.name)
            job_id = open_market(client)
            wait_for(lambda: client.job(job_id).terminal, RAY_JOB_TIMEOUT_S, "the job ends")
            assert client.job(job_id).state is JobState.SUCCEEDED
            assert client.account("acme").balance.credits_posted > 0  # the provider was paid
            assert client.verify_ledger().ok
        code, took_s = served.stop()
    assert code == 0, served.output()
    assert took_s < STOP_TIMEOUT_S
    assert not scheduler_alive(served)


def test_serve_runs_no_strangers_job_on_its_own_machine(tmp_path: Path) -> None:
    """Without --local-ray, a node with no agent gets no work: nothing runs beside the
    coordinator's keys and database (the job waits for the node's agent)."""
    with serving(tmp_path / "server") as served:
        with remote(served, tmp_path / "client") as client:
            job_id = open_market(client)
            time.sleep(2.0)  # several scheduler cycles
            view = client.job(job_id)
            assert view.state is JobState.PENDING and not view.allocations
            assert any("busy" in r or "wait" in r for r in view.reasons), view.reasons
        code, _ = served.stop()
    assert code == 0, served.output()


# -- two servers, one PostgreSQL -----------------------------------------------------------
CLIENTS = 50  # threads, each its own developer account and key
JOBS_PER_CLIENT = 4  # 200 jobs wanting about 650 GPUs of 108: the loops contend throughout
NODE_GPUS = [1, 2, 3, 4, 5, 6, 7, 8] * 3
SETTLE_S = 2.0  # no allocation appears or changes for this long: the loops placed what fits
RUN_TIMEOUT_S = 45.0


def patient(call: Callable[[], Any]) -> Any:
    """``call``, again after the wait a 429 asks for: 50 clients share one address's limit."""
    for _ in range(50):
        try:
            return call()
        except RateLimitedError as exc:
            time.sleep(exc.retry_after_s)
    return call()


@dataclass(frozen=True)
class Submitted:
    job_id: int
    gpus: int
    replicas: int
    cancelled: bool = False


def developer(i: int, servers: list[Served], tmp_path: Path) -> list[Submitted]:
    """One client: opens its account through one server, submits through both in turn, then
    cancels its first job (placed or not: what it held goes back to the loops)."""
    name = f"dev{i:02d}"
    clients = [remote(served, tmp_path / name) for served in servers]
    try:
        first = clients[i % 2]
        first.new_key(name)
        patient(lambda: first.create_account(name, key=name))
        patient(lambda: first.deposit(name, "50"))
        done = []
        for n in range(JOBS_PER_CLIENT):
            gpus, replicas = 1 + (i + n) % 4, 1 + (i + n) % 3 // 2  # 1-4 GPUs, some twice
            spec = job(f"{name}-{n}", resources={"gpus": gpus}, replicas=replicas)
            view = patient(lambda c=clients[(i + n) % 2], s=spec: c.submit(s, account=name))
            done.append(Submitted(view.id, gpus, replicas))
        patient(lambda: clients[i % 2].cancel(done[0].job_id))
        return [replace(done[0], cancelled=True), *done[1:]]
    finally:
        for client in clients:
            client.close()


def bookings(provider: Client) -> tuple[list[NodeView], dict[int, list[AllocationView]]]:
    """Every node, and the allocations on each, read through the API as their provider."""
    nodes = provider.nodes()
    return nodes, {n.id: provider.allocations(n.id, limit=10_000) for n in nodes}


def states(provider: Client) -> dict[int, tuple[int, str]]:
    """Each allocation's state: what changes while a loop still works."""
    _, allocations = bookings(provider)
    return {a.id: (a.node_id, a.state) for found in allocations.values() for a in found}


def scheduler_pids(database_url: str) -> set[int]:
    """The processes whose scheduler loops are registered in the database."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            found = conn.execute(select(Driver.pid).where(Driver.kind == "scheduler"))
            return set(found.scalars())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_two_servers_on_one_postgresql_never_book_a_gpu_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    started = time.monotonic()
    with (
        serving(tmp_path / "a", "--no-launch", database_url=postgres_url) as a,
        serving(tmp_path / "b", "--no-launch", database_url=postgres_url) as b,
        remote(a, tmp_path / "acme") as provider,
    ):
        provider.new_key("acme")
        provider.register_provider("acme", key="acme")
        provider.add_nodes([node(name=f"n{i}", gpus=g) for i, g in enumerate(NODE_GPUS)])
        with ThreadPoolExecutor(CLIENTS) as pool:
            runs = pool.map(lambda i: developer(i, [a, b], tmp_path), range(CLIENTS))
            submitted = {s.job_id: s for run in runs for s in run}
        assert len(submitted) == CLIENTS * JOBS_PER_CLIENT

        last, steady_since = states(provider), time.monotonic()
        while time.monotonic() - steady_since < SETTLE_S:
            assert time.monotonic() - started < RUN_TIMEOUT_S, "the loops never settled"
            time.sleep(0.5)
            if (now := states(provider)) != last:
                last, steady_since = now, time.monotonic()

        nodes, allocations = bookings(provider)
        booked_per_job: dict[int, list[AllocationView]] = defaultdict(list)
        for n in nodes:
            active = [x for x in allocations[n.id] if x.state.active]
            booked = sum(x.gpus for x in active)
            assert booked <= n.gpus, f"node {n.name}: {booked} GPUs booked of {n.gpus}"
            assert n.gpus_free == n.gpus - booked, f"node {n.name}: free GPUs disagree"
            for x in active:
                assert x.job_id is not None
                booked_per_job[x.job_id].append(x)
        for job_id, found in booked_per_job.items():
            want = submitted[job_id]
            assert not want.cancelled, f"cancelled job {job_id} still holds GPUs"
            assert sorted(x.gpus for x in found) == [want.gpus] * want.replicas, job_id
            assert len({x.node_id for x in found}) == want.replicas, job_id  # distinct nodes
        assert 0 < len(booked_per_job) < len(submitted)  # some placed; the rest could not fit
        assert provider.verify_ledger().ok
        assert scheduler_pids(postgres_url) == {a.process.pid, b.process.pid}

        exits = [a.stop()[0], b.stop()[0]]
    assert exits == [0, 0], a.output() + b.output()
    assert scheduler_pids(postgres_url) == set()  # both loops retired on SIGTERM
    assert time.monotonic() - started < RUN_TIMEOUT_S + STOP_TIMEOUT_S
