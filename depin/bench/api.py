"""``depin bench api``: a live ``depin serve`` driven through the real SDK over loopback.

The server runs as its own process (its own DEPIN_HOME; a fresh SQLite file by
default, or ``--db``: on PostgreSQL a scratch schema, see ``scratch.py``),
with no scheduler, so what is measured is the API: signed submissions, a
public read (offers) and a signed private read (a job's status), each for
``seconds`` by ``clients`` concurrent clients, each client its own account
and key. The clients are the SDK (``depin.Client(url=...)``) in load
processes of their own, so they compete with the server for this machine's
cores as real clients on it would. Every request is counted with its
latency; an error is the rate limit's (429), the client's doing (another
4xx) or the server's (5xx, unreachable, an answer outside the contract). A
client that had nothing left to send (no jobs to read, every envelope sent)
is counted, so a phase's rate is never a ceiling of the harness's making.

Envelopes are signed before a phase starts (signing a manifest is the
developer's work, not the market's); every HTTP request is signed as it is
sent, with a fresh nonce.
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from depin.api.problems import status_of
from depin.bench.processes import READY_TIMEOUT_S, Group, env_for, free_port, wait_ready
from depin.bench.scratch import scratch_database
from depin.client import Client
from depin.errors import DepinError, RateLimitedError
from depin.spec import JobSpec
from providers.fleet import synthetic_nodes

FLEET_NODES = 200
DEPOSIT_USD = 1_000_000
PHASES = ("submit", "offers", "job_status")
MAX_RATE_PER_CLIENT = 100  # submissions/s one client could send: envelopes signed ahead
JOB = {
    "name": "bench",
    "command": ["true"],
    "resources": {"gpus": 1},
    "max_duration_s": 60,
    "pricing": {"max_usd_per_gpu_hour": "5"},
}
Progress = Callable[[str], None]


class Server:
    """``depin serve`` (API only) in a process group of its own, stopped with SIGTERM."""

    def __init__(self, home: Path, database_url: str | None, workers: int) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        extra = {"DEPIN_API_RATE_PER_ADDRESS": "1000000"}  # every client shares one loopback
        if database_url:
            extra["DEPIN_DATABASE_URL"] = database_url
        command = [sys.executable, "-m", "cli", "serve", "--port", self.url.rsplit(":", 1)[1]]
        command += ["--no-scheduler", "--workers", str(workers)]
        self.group = Group(command, env_for(home, **extra), home / "serve.log")

    def wait_ready(self) -> None:
        wait_ready(self.group, self.url, READY_TIMEOUT_S)

    def stop(self) -> None:
        self.group.stop(timeout_s=30)


def _setup(url: str, server_home: Path, client_home: Path, clients: int) -> list[str]:
    """A provider with a fleet, and one funded developer account (and key) per client."""
    client_home.mkdir(parents=True)
    (client_home / "keys").mkdir(mode=0o700)
    for name in ("operator.key", "operator.pub"):  # the operator signs deposits, as on its host
        shutil.copy2(server_home / "keys" / name, client_home / "keys" / name)
    with Client(url=url, home=client_home) as client:
        client.new_key("bench-provider")
        client.register_provider("bench-provider", key="bench-provider")
        fleet = [
            n.spec().model_copy(update={"provider": "bench-provider"})
            for n in synthetic_nodes(FLEET_NODES, seed=7)
        ]
        client.add_nodes(fleet)
        names = [f"bench-{i}" for i in range(clients)]
        for name in names:
            client.new_key(name)
            client.create_account(name, key=name)
            client.deposit(name, DEPOSIT_USD)
    return names


ERROR_KINDS = ("client", "server", "rate_limited")


def _error_kind(exc: DepinError) -> str:
    """429 is the rate limit; another 4xx the client's doing; the rest (5xx, and a server
    that could not be reached or answered outside its contract) the server's."""
    if isinstance(exc, RateLimitedError):
        return "rate_limited"
    return "server" if status_of(exc) >= 500 else "client"


def _load(
    url: str,
    home: str,
    accounts: list[str],
    phase: str,
    seconds: float,
    everyone: Any,
    results: Any,
) -> None:
    """One load process: a thread per account. Every client gets ready (signs its envelopes,
    finds its jobs) before any starts; all send ``phase`` requests for ``seconds``."""
    latencies: list[float] = []
    errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
    idle = {"no_jobs": 0, "out_of_envelopes": 0}  # clients that stopped sending early
    lock, go = threading.Lock(), threading.Event()
    ready = threading.Barrier(len(accounts) + 1)
    window: list[float] = []

    def count(table: dict[str, int], kind: str) -> None:
        with lock:
            table[kind] += 1

    def client_loop(account: str) -> None:
        with Client(url=url, home=home, account=account) as client:
            spec = JobSpec.model_validate(JOB)
            envelopes: list[Any] = []
            if phase == "submit":  # the developer's own work, done before the clock starts
                key = client.signing_key_for(account)
                signed = int(seconds * MAX_RATE_PER_CLIENT) + 1
                envelopes = [client.sign(spec, key=key, account=account) for _ in range(signed)]
            mine = client.jobs(account=account, limit=50) if phase == "job_status" else []
            ready.wait()
            go.wait()
            end, i = window[0] + seconds, 0
            if phase == "job_status" and not mine:
                count(idle, "no_jobs")
                return
            while time.time() < end:
                if phase == "submit" and i == len(envelopes):
                    count(idle, "out_of_envelopes")
                    return
                began = time.perf_counter()
                try:
                    if phase == "submit":
                        client.submit(envelopes[i])
                    elif phase == "offers":
                        client.search(spec, limit=10)
                    else:
                        client.job(mine[i % len(mine)].id)
                except DepinError as exc:
                    count(errors, _error_kind(exc))
                    continue
                except Exception:  # the SDK broke its contract: the server's answer was odd
                    count(errors, "server")
                    continue
                finally:
                    i += 1
                with lock:
                    latencies.append(time.perf_counter() - began)

    threads = [threading.Thread(target=client_loop, args=(a,)) for a in accounts]
    for t in threads:
        t.start()
    ready.wait()  # this process's clients are ready ...
    everyone.wait()  # ... and so are every other process's: start together
    window.append(time.time())
    go.set()
    for t in threads:
        t.join()
    results.put({"latencies": latencies, "errors": errors, "idle_clients": idle})


def _phase(
    url: str, home: Path, accounts: list[str], phase: str, seconds: float, processes: int
) -> dict[str, Any]:
    shares = [share for share in (accounts[i::processes] for i in range(processes)) if share]
    spawn = multiprocessing.get_context("spawn")
    everyone, results = spawn.Barrier(len(shares)), spawn.Queue()
    workers = [
        spawn.Process(target=_load, args=(url, str(home), share, phase, seconds, everyone, results))
        for share in shares
    ]
    for w in workers:
        w.start()
    outcomes = [results.get(timeout=seconds + 600) for _ in workers]
    for w in workers:
        w.join()
    latencies = sorted(x for r in outcomes for x in r["latencies"])
    errors = {k: sum(r["errors"][k] for r in outcomes) for k in ERROR_KINDS}
    idle = {k: sum(r["idle_clients"][k] for r in outcomes) for k in outcomes[0]["idle_clients"]}
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [0.0] * 99
    return {
        "requests": len(latencies),
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
        "errors": errors,
        "idle_clients": idle,
    }


def run(
    *,
    clients: int = 50,
    seconds: float = 20.0,
    database_url: str | None = None,
    workers: int = 1,
    processes: int = 2,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every phase's figures, and whether the ledger verified afterwards."""
    say = progress or (lambda _msg: None)
    with scratch_database(database_url) as db:
        figures, ledger_ok = _serve_and_drive(db.url, clients, seconds, workers, processes, say)
    return {
        "database": db.description,
        "clients": clients,
        "seconds": seconds,
        "workers": workers,
        "load_processes": processes,
        **figures,
        "ledger_ok": ledger_ok,
    }


def _serve_and_drive(
    database_url: str | None,
    clients: int,
    seconds: float,
    workers: int,
    processes: int,
    say: Progress,
) -> tuple[dict[str, Any], bool]:
    """Every phase's figures, and whether the ledger verified; the server is stopped after."""
    root = Path(tempfile.mkdtemp(prefix="depin-bench-api-"))
    server_home = root / "server"
    server_home.mkdir()
    server = Server(server_home, database_url, workers)
    try:
        server.wait_ready()
        say(f"depin serve ready at {server.url}; {clients} accounts and {FLEET_NODES} nodes")
        accounts = _setup(server.url, server_home, root / "clients", clients)
        figures = {}
        for phase in PHASES:
            say(f"{phase}: {clients} clients for {seconds:g} s")
            figures[phase] = _phase(
                server.url, root / "clients", accounts, phase, seconds, processes
            )
        with Client(url=server.url, home=root / "clients", account=accounts[0]) as client:
            ledger_ok = client.verify_ledger().ok
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return figures, ledger_ok
