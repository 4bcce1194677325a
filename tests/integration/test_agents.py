"""Providers' machines as they really run: a coordinator and three node agents, each a process.

``depin serve`` on a loopback port (node TTL 2 s + grace 2 s, so a dead agent is
noticed in seconds) and three ``depin agent run --simulate-gpus 1`` processes in
pull mode, each with a DEPIN_HOME of its own that holds only the provider's key
(the coordinator never holds it; the agents never hold the database). Every
process has its own process group, ended by the test. The agents are shared by
the tests of this module, which run in order: the failover test kills one and
brings it back.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from depin.client import Client
from depin.runtime import sandbox
from depin.states import AllocationState, JobState
from tests.api.test_live import REPO, Served, remote, serving, wait_for
from tests.factories import BERLIN, FRANKFURT, PARIS, job, node

pytestmark = pytest.mark.skipif(
    sandbox.unavailable() is not None, reason=f"no sandbox here: {sandbox.unavailable()}"
)
TTL_S, GRACE_S = 2, 2
HEARTBEAT_S = 0.5
START_TIMEOUT_S = 60.0
CITIES = {"berlin": (BERLIN, "0.30"), "paris": (PARIS, "0.40"), "frankfurt": (FRANKFURT, "0.50")}


@dataclass
class Agent:
    """One ``depin agent run`` process, restartable."""

    node_id: int
    home: Path
    url: str
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
        env |= {"DEPIN_HOME": str(self.home), "PYTHONPATH": str(REPO)}
        env["AGENT_SECRET"] = "agent-only"  # a job must never see it
        argv = [sys.executable, "-m", "cli", "agent", "run", "--node", str(self.node_id)]
        argv += ["--api", self.url, "--simulate-gpus", "1"]
        argv += ["--heartbeat-interval-s", str(HEARTBEAT_S)]
        with (self.home / "agent.log").open("ab") as out:
            self.process = subprocess.Popen(
                argv,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: kill -9 takes its jobs too
            )

    def kill(self) -> None:
        """kill -9 the agent and everything it started."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def log(self) -> str:
        return (self.home / "agent.log").read_text(errors="replace")[-3000:]


@dataclass
class Fleet:
    served: Served
    client: Client
    agents: dict[str, Agent]

    def node_of(self, job_id: int) -> int:
        alloc = self.client.job(job_id).allocation
        assert alloc is not None
        return alloc.node_id

    def agent_on(self, node_id: int) -> Agent:
        return next(a for a in self.agents.values() if a.node_id == node_id)

    def wait_state(self, job_id: int, states: set[JobState], timeout_s: float) -> None:
        wait_for(
            lambda: self.client.job(job_id).state in states,
            timeout_s,
            f"job {job_id} in {sorted(states)} (agents: {self._logs()})",
        )

    def _logs(self) -> str:
        return "\n".join(f"--- {n}\n{a.log()}" for n, a in self.agents.items())


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("agents")
    env = {"DEPIN_NODE_TTL_S": str(TTL_S), "DEPIN_NODE_GRACE_S": str(GRACE_S)}
    with serving(root / "server", env=env) as served:
        client = remote(served, root / "client")
        client.new_key("acme")
        client.register_provider("acme", key="acme")
        agents = {}
        for city, ((lat, lon), price) in CITIES.items():
            spec = node(name=city, gpus=1, lat=lat, lon=lon, price_usd_per_gpu_hour=Decimal(price))
            home = root / f"agent-{city}"
            (home / "keys").mkdir(parents=True, mode=0o700)
            for path in client.settings.keys_dir.glob("acme.*"):  # the provider's key only
                shutil.copy2(path, home / "keys" / path.name)
            agents[city] = Agent(client.add_node(spec).id, home, served.url)
        client.new_key("dev")
        client.create_account("dev", key="dev")
        client.deposit("dev", "50")
        for agent in agents.values():
            agent.start()
        try:
            wait_for(
                lambda: all(n.agent == "pull" and n.status == "active" for n in client.nodes()),
                START_TIMEOUT_S,
                "three agents heartbeating",
            )
            yield Fleet(served, client, agents)
        finally:
            for agent in agents.values():
                agent.kill()
            client.close()


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def test_nodes_served_by_agents_show_as_pulled_and_simulated(fleet: Fleet) -> None:
    assert {(n.agent, n.simulated, n.status) for n in fleet.client.nodes()} == {
        ("pull", True, "active")
    }


def test_a_job_runs_on_an_agent_and_its_provider_is_paid(fleet: Fleet) -> None:
    code = "import os; print(os.environ['DEPIN_NODE_ID'], os.environ['CUDA_VISIBLE_DEVICES'])"
    job_id = fleet.client.submit(job(command=python(code)), account="dev").id
    fleet.wait_state(job_id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    view = fleet.client.job(job_id)
    assert view.state is JobState.SUCCEEDED, view
    assert view.allocation is not None and view.allocation.cost_micro_usd
    assert view.allocation.output_tail == f"{view.allocation.node_id} 0\n"
    assert fleet.client.verify_ledger().ok


def test_a_job_cannot_read_the_agents_keys_environment_or_reach_the_coordinator(
    fleet: Fleet,
) -> None:
    port = int(fleet.served.url.rsplit(":", 1)[1])
    keys = [str(a.home / "keys" / "acme.key") for a in fleet.agents.values()]
    probe = f"""
import json, os, socket
out = {{"env": sorted(os.environ), "keys": [], "pid1": "", "net": None}}
for path in {keys!r}:
    try:
        out["keys"].append(open(path).read()[:10])
    except OSError as exc:
        out["keys"].append(type(exc).__name__)
try:
    out["pid1"] = open("/proc/1/environ").read()
except OSError as exc:
    out["pid1"] = type(exc).__name__
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    out["net"] = "connected"
except OSError as exc:
    out["net"] = type(exc).__name__
print(json.dumps(out))
"""
    closed = fleet.client.submit(job(name="closed", command=python(probe)), account="dev").id
    opened = fleet.client.submit(
        job(name="opened", command=python(probe), network=True), account="dev"
    ).id
    for job_id in (closed, opened):
        fleet.wait_state(job_id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    sealed = json.loads(fleet.client.job(closed).allocation.output_tail)  # type: ignore[union-attr]
    assert all(k in ("FileNotFoundError", "PermissionError") for k in sealed["keys"]), sealed
    assert "AGENT_SECRET" not in sealed["env"] and "AGENT_SECRET" not in sealed["pid1"]
    assert not {"DEPIN_HOME", "DEPIN_API_URL"} & set(sealed["env"])
    assert sealed["net"] != "connected"
    networked = json.loads(fleet.client.job(opened).allocation.output_tail)  # type: ignore[union-attr]
    assert networked["net"] == "connected"


def test_logs_follow_a_running_job_and_a_cancel_pays_for_the_time_it_ran(fleet: Fleet) -> None:
    ticker = "import time\nfor i in range(60):\n    print('tick', i, flush=True); time.sleep(0.25)"
    spec = job(name="ticker", command=python(ticker), max_duration_s=120)
    job_id = fleet.client.submit(spec, account="dev").id
    seen: list[tuple[float, str]] = []

    def follow() -> None:
        for text in fleet.client.logs(job_id, follow=True):
            seen.extend((time.monotonic(), line) for line in text.splitlines())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_for(lambda: len(seen) >= 4, 60, "four lines followed while the job runs")
    assert fleet.client.job(job_id).state is JobState.RUNNING  # they came as printed
    fleet.client.cancel(job_id)
    fleet.wait_state(job_id, {JobState.CANCELLED}, 30)
    reader.join(timeout=10)
    assert not reader.is_alive()  # the stream ends with the job
    lines = [line for _, line in seen]
    assert lines[:4] == ["tick 0", "tick 1", "tick 2", "tick 3"] and len(lines) < 60
    assert seen[3][0] - seen[0][0] > 0.3  # streamed over time, not dumped at the end
    alloc = fleet.client.job(job_id).allocation
    assert alloc is not None and alloc.state is AllocationState.CANCELLED
    assert 0 < (alloc.cost_micro_usd or 0) < fleet.client.job(job_id).max_cost_micro_usd
    assert fleet.client.verify_ledger().ok


def test_a_job_whose_agent_is_killed_completes_elsewhere_charged_once(fleet: Fleet) -> None:
    spec = job(name="long", command=python("import time; time.sleep(20); print('done')"))
    job_id = fleet.client.submit(spec, account="dev").id
    fleet.wait_state(job_id, {JobState.RUNNING}, 60)
    first = fleet.node_of(job_id)
    victim = fleet.agent_on(first)
    victim.kill()  # kill -9, the job with it
    fleet.wait_state(job_id, {JobState.SUCCEEDED, JobState.FAILED}, TTL_S + GRACE_S + 60)
    view = fleet.client.job(job_id)
    assert view.state is JobState.SUCCEEDED, view
    lost, done = view.allocations[0], view.allocations[-1]
    assert lost.node_id == first and lost.state is AllocationState.LOST
    assert not lost.cost_micro_usd  # the first provider is not paid for the lost allocation
    assert done.node_id != first and done.state is AllocationState.SUCCEEDED
    payouts = [e for e in fleet.client.ledger_entries(limit=1000) if e.job_id == job_id]
    assert [e.allocation_id for e in payouts if e.kind == "payout"] == [done.id]  # charged once
    assert fleet.client.verify_ledger().ok
    victim.start()  # the agent comes back: so does its node
    wait_for(
        lambda: next(n for n in fleet.client.nodes() if n.id == first).status == "active",
        START_TIMEOUT_S,
        "the restarted agent's node back in service",
    )


def test_an_agent_stopped_by_sigterm_gives_its_job_back_and_exits_0(fleet: Fleet) -> None:
    spec = job(name="drained", command=python("import time; time.sleep(5); print('done')"))
    job_id = fleet.client.submit(spec, account="dev").id
    fleet.wait_state(job_id, {JobState.RUNNING}, 60)
    first = fleet.node_of(job_id)
    agent = fleet.agent_on(first)
    assert agent.process is not None
    agent.process.send_signal(signal.SIGTERM)
    assert agent.process.wait(timeout=15) == 0
    node = next(n for n in fleet.client.nodes() if n.id == first)
    assert node.status == "offline"  # it said it leaves: no TTL to wait out
    fleet.wait_state(job_id, {JobState.SUCCEEDED, JobState.FAILED}, 60)
    view = fleet.client.job(job_id)
    assert view.state is JobState.SUCCEEDED, view
    given_up = view.allocations[0]
    assert given_up.node_id == first and given_up.state is AllocationState.LOST
    assert given_up.error is not None and "agent stopped" in given_up.error
    assert view.allocations[-1].node_id != first
    agent.start()
    wait_for(
        lambda: next(n for n in fleet.client.nodes() if n.id == first).status == "active",
        START_TIMEOUT_S,
        "the restarted agent's node back in service",
    )


def test_an_agent_refuses_to_serve_a_node_registered_with_more_gpus_than_it_has(
    fleet: Fleet, tmp_path: Path
) -> None:
    agent = next(iter(fleet.agents.values()))
    argv = [sys.executable, "-m", "cli", "agent", "run", "--node", str(agent.node_id)]
    argv += ["--api", fleet.served.url]  # no GPU here, and none simulated
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    env |= {"DEPIN_HOME": str(agent.home), "PYTHONPATH": str(REPO)}
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "--simulate-gpus" in result.stderr and "Traceback" not in result.stderr


def test_the_coordinator_stops_promptly_while_agents_hold_long_polls(fleet: Fleet) -> None:
    code, took_s = fleet.served.stop()  # every agent holds a request for work open
    assert code == 0 and took_s < 10
