"""Ray mode end to end: two agents' raylets join a token-authenticated head, the scheduler
drives that cluster, and the agent running a job is killed with SIGKILL.

One SQLite market is shared by every process, each with a DEPIN_HOME of its own (a
provider's key lives on its machine only). Node paris (provider acme) and node
frankfurt (provider bolt) have one L4 each; each agent runs ``depin agent run --node N
--ray-address HEAD`` on a machine of its own and starts the node's raylet; ``depin
scheduler run`` joins the cluster as its driver. A job near Paris runs on the raylet of
the node it is placed on (paris, as a rule); when that node's agent is killed, its raylet
must go with it, and the job must finish on the other node, be charged once, and leave
the first node's provider unpaid.

As in ``test_raylet``, the cluster lives in user, network and PID namespaces of its own
(``tests.integration.namespaces``); each agent's machine is a further network and mount
namespace on a bridge. This module, run as a script there, is the scenario; it writes
what it saw to a JSON file that the tests below judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from depin.client import Client
from depin.spec import JobSpec, NodeSpec
from providers.raylet import HealthChecks, RayStart, head_command, head_env
from tests.integration.namespaces import (
    RAY_BIN,
    REPO_ROOT,
    cmdline,
    free_port,
    is_alive,
    live_processes,
    pids,
    proc_stat,
    scenario_result,
    write_result,
)

SCENARIO_TIMEOUT_S = 110  # the hard cap, from outside the namespace; a run takes 30-45 s
START_TIMEOUT_S = 60  # the head; the agents' raylets joining it
RUN_TIMEOUT_S = 40  # from submission (or the kill) to a run's start on a raylet
FINISH_TIMEOUT_S = 30  # from the last run's start to the job's end
LOST_TIMEOUT_S = 20
STOP_TIMEOUT_S = 15
CLI_TIMEOUT_S = 60
POLL_S = 0.2
NODE_GONE_WITHIN_S = 5.0
HEARTBEAT_INTERVAL_S = 0.5
NODE_TTL_S = 2
NODE_GRACE_S = 2
NODE_CHECK_S = 1  # depin.limits.NODE_CHECK_INTERVAL_S: how often a driver looks for silence
LOST_WITHIN_S = NODE_TTL_S + NODE_GRACE_S + NODE_CHECK_S + 3  # + a busy machine's delays
HEALTH = HealthChecks()  # the head sees a killed raylet dead in about 1.5 s
BRIDGE = "depin0"
HEAD_IP = "10.0.0.1"
MACHINES = {"paris": "10.0.0.2", "frankfurt": "10.0.0.3"}  # the node (and machine) names
PROVIDERS = {"paris": "acme", "frankfurt": "bolt"}
JOINED = "joined the Ray cluster"  # the agent's log line once its raylet is up
PARIS = (48.8566, 2.3522)
FRANKFURT = (50.11, 8.68)
JOB_SLEEP_S = 10
# The job notes where it runs (its node, allocation and process ancestry) in the runs
# directory before anyone can kill it, prints the same, and sleeps.
JOB_CODE = """
import json, os, sys, time
chain, pid = [], os.getpid()
while pid > 1:
    chain.append(pid)
    with open(f"/proc/{pid}/stat") as f:
        pid = int(f.read().rpartition(")")[2].split()[1])
seen = {k: os.environ["DEPIN_" + k.upper()] for k in ("node_id", "allocation_id")}
seen["ancestors"] = chain
path = os.path.join(sys.argv[1], seen["allocation_id"] + ".json")
with open(path + ".part", "w") as f:
    json.dump(seen, f)
os.rename(path + ".part", path)
print(json.dumps(seen), flush=True)
time.sleep(float(sys.argv[2]))
"""


# --- processes ---------------------------------------------------------------------------


@dataclass
class Group:
    """A child in a process group of its own, its output in a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], work: Path) -> Group:
        log = work / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return cls(name, proc, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        # WNOWAIT: not reaped, so its pid (the group's id) stays ours to kill.
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return self.proc.returncode is None and os.waitid(os.P_PID, self.proc.pid, flags) is None

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    parents = {pid: stat[1] for pid in pids() if (stat := proc_stat(pid)) is not None}
    found, frontier = [], {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        found += sorted(frontier)
    return found


def _until(check: Callable[[], Any], timeout_s: float) -> Any:
    """``check()``'s first truthy value within ``timeout_s``, else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(POLL_S)
    return None


def _since(start: float) -> float:
    return round(time.monotonic() - start, 2)


# --- machines ----------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def _network() -> None:
    """lo, and the bridge that the head (on it as HEAD_IP) shares with every machine."""
    _ip("link", "set", "lo", "up")  # down in a new netns
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{HEAD_IP}/24", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def _machine(name: str, work: Path) -> tuple[Group, list[str]]:
    """A machine of its own: network and mount namespaces held open by a sleeper, on the
    bridge, with a private Ray temporary directory. Returns the sleeper and the command
    prefix that runs a program on that machine.

    A provider's agent has its machine to itself, and Ray counts on it: a raylet takes
    fixed ports, and one that joins a cluster puts its sockets in the head's temporary
    directory (the same path, on its own machine), where two raylets starting at once
    on one machine race for the same socket names.
    """
    holder = Group.start(
        f"machine-{name}",
        ["unshare", "--net", "--mount", "sleep", "infinity"],
        dict(os.environ),
        work,
    )
    ns = {kind: f"/proc/{holder.proc.pid}/ns/{kind}" for kind in ("net", "mnt")}
    outer = {kind: os.readlink(f"/proc/self/ns/{kind}") for kind in ns}
    _until(lambda: holder.alive() and all(os.readlink(ns[k]) != outer[k] for k in ns), 10)
    enter = ["nsenter", f"--net={ns['net']}", f"--mount={ns['mnt']}", f"--wd={REPO_ROOT}", "--"]
    veth = f"v-{name}"[:15]  # interface names have 15 characters at most
    _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", str(holder.proc.pid))
    _ip("link", "set", veth, "master", BRIDGE)
    _ip("link", "set", veth, "up")
    private_tmp = work / f"ray-{name}"
    private_tmp.mkdir()
    for inside in (
        ["ip", "link", "set", "lo", "up"],
        ["ip", "addr", "add", f"{MACHINES[name]}/24", "dev", "eth0"],
        ["ip", "link", "set", "eth0", "up"],
        ["mount", "--bind", str(private_tmp), str(work / "ray")],
    ):
        subprocess.run([*enter, *inside], check=True, capture_output=True, timeout=10)
    return holder, enter


# --- the market --------------------------------------------------------------------------


def _depin(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        _depin(*args),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        check=False,
    )
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = None
    return {"exit_code": done.returncode, "json": data, "stderr": done.stderr[-2000:]}


def _market(work: Path, database_url: str) -> dict[str, int]:
    """`depin init`, a provider and its node per machine, a developer with money; node ids.

    Each provider's key is made in its machine's DEPIN_HOME and nowhere else: the
    coordinator holds none, so a paid allocation proves that its receipt was signed on
    the machine that ran it.
    """
    places = {"paris": (PARIS, "0.40", "eu-west"), "frankfurt": (FRANKFURT, "0.60", "eu-central")}
    with Client(home=str(work / "coordinator"), database_url=database_url) as client:
        client.init()
        client.new_key("dev")
        client.create_account("dev", key="dev")
        client.deposit("dev", "10")
    ids = {}
    for name, ((lat, lon), price, region) in places.items():
        provider = PROVIDERS[name]
        with Client(home=str(work / f"home-{name}"), database_url=database_url) as client:
            client.new_key(provider)
            client.register_provider(provider, key=provider)
            spec = {
                "provider": provider,
                "name": name,
                "gpu_model": "L4",
                "gpus": 1,
                "price_usd_per_gpu_hour": Decimal(price),
                "lat": lat,
                "lon": lon,
                "tier": "edge",
                "region": region,
                "network": "fiber",
            }
            ids[name] = client.add_node(NodeSpec.model_validate(spec)).id
    return ids


def _submit(env: dict[str, str], runs: Path) -> int:
    spec = JobSpec.model_validate(
        {
            "name": "failover",
            "command": ["python", "-c", JOB_CODE, str(runs), str(JOB_SLEEP_S)],
            "resources": {"gpus": 1, "gpu_models": ["L4"]},
            "placement": {"near": [{"lat": PARIS[0], "lon": PARIS[1]}]},
            "max_duration_s": 120,
        }
    )
    with _client(env) as client:
        return client.submit(spec, account="dev").id


def _client(env: dict[str, str]) -> Client:
    return Client(home=env["DEPIN_HOME"], database_url=env["DEPIN_DATABASE_URL"])


def _market_view(env: dict[str, str]) -> dict[str, Any]:
    with _client(env) as client:
        return {
            "balances": {
                b.account: {"held": b.debits_pending, "spent": b.debits_posted}
                | {"received": b.credits_posted}
                for b in client.balances()
            },
            "node_states": {n.name: {"status": n.status, "agent": n.agent} for n in client.nodes()},
        }


# --- the scenario, inside the namespaces ------------------------------------------------


def scenario(work: Path) -> dict[str, Any]:
    """The market, the cluster, a job, a kill. Returns what was seen."""
    _network()
    runs = work / "runs"
    runs.mkdir()
    token_path = work / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    port = free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    # Every process: one market, and Ray's files under work/ (not /tmp/ray).
    base = dict(os.environ) | {
        "DEPIN_DATABASE_URL": f"sqlite:///{work / 'market.db'}",
        "RAY_TMPDIR": str(work),
    }
    coordinator = base | {
        "DEPIN_HOME": str(work / "coordinator"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_path),
        "DEPIN_RAY_ADDRESS": address,
        "DEPIN_NODE_TTL_S": str(NODE_TTL_S),
        "DEPIN_NODE_GRACE_S": str(NODE_GRACE_S),
    }
    started = time.monotonic()
    seen: dict[str, Any] = {"nodes": _market(work, base["DEPIN_DATABASE_URL"])}
    head = RayStart(
        head_command(port, ray_bin=str(RAY_BIN), node_ip=HEAD_IP),
        head_env(base, str(token_path), HEALTH),
    )
    groups: dict[str, Group] = {}
    try:
        head.start()
        if not head.wait_started(START_TIMEOUT_S):
            seen |= {"error": "the head did not start", "output": head.output_tail()}
            return seen
        seen["head_up_s"] = _since(started)
        for name, node_id in seen["nodes"].items():
            groups[f"machine-{name}"], on_machine = _machine(name, work)
            argv = on_machine + _depin(
                "agent", "run", "--node", str(node_id), "--ray-address", address,
                "--ray-token-path", str(token_path), "--simulate-gpus", "1",
                "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
            )  # fmt: skip
            machine_env = base | {"DEPIN_HOME": str(work / f"home-{name}")}
            groups[name] = Group.start(f"agent-{name}", argv, machine_env, work)
        groups["scheduler"] = Group.start(
            "scheduler", _depin("scheduler", "run"), coordinator, work
        )
        for name in seen["nodes"]:
            agent = groups[name]
            _until(lambda a=agent: JOINED in a.output() or not a.alive(), START_TIMEOUT_S)
            if JOINED not in agent.output():
                seen["error"] = f"agent {name} did not join"
                return seen
        seen["agents_up_s"] = _since(started)
        seen["agent_pids"] = {name: groups[name].proc.pid for name in seen["nodes"]}
        seen |= _failover(coordinator, runs, groups, seen["nodes"])
        if "error" in seen:
            return seen
        seen["ledger_verify"] = _cli(coordinator, "ledger", "verify", "--json")
        seen["job"] = _cli(coordinator, "job", "status", str(seen["job_id"]), "--json")["json"]
        seen |= _market_view(coordinator)
        stopping = time.monotonic()
        seen["exit_codes"] = _stop(groups, head)
        seen["stop_s"] = _since(stopping)
        seen["leftovers"] = live_processes()
    finally:
        seen["logs"] = {name: group.output() for name, group in groups.items()}
        for group in groups.values():
            group.kill()
        head.stop(timeout_s=STOP_TIMEOUT_S)
    seen["total_s"] = _since(started)
    return seen


def _failover(
    env: dict[str, str], runs: Path, groups: dict[str, Group], nodes: dict[str, int]
) -> dict[str, Any]:
    """Submit the job; once it runs, kill its agent; follow the job to its end."""
    seen: dict[str, Any] = {"job_id": _submit(env, runs)}
    submitted = time.monotonic()
    first = _until(lambda: _new_run(runs, set()), RUN_TIMEOUT_S)
    if first is None:
        return seen | {"error": "the job never started"}
    seen["first_run"], seen["first_run_after_s"] = first, _since(submitted)
    # The victim is wherever the job landed: paris most often, but learned reliability
    # (heartbeats late on a busy machine) can tip the scorer to frankfurt.
    (victim,) = [name for name, node_id in nodes.items() if str(node_id) == first["node_id"]]
    (seen["survivor"],) = set(nodes) - {victim}
    node_processes = _descendants(groups[victim].proc.pid)
    seen["victim"], seen["victim_processes"] = victim, [cmdline(p) for p in node_processes]
    killed = time.monotonic()
    groups[victim].kill()  # SIGKILL to the agent's group, as the OOM killer or kill -9 would
    gone = _until(lambda: not any(is_alive(p) for p in node_processes), NODE_GONE_WITHIN_S)
    seen["node_gone_after_s"] = _since(killed) if gone else None
    seen["node_left"] = [cmdline(p) for p in node_processes if is_alive(p)]
    with _client(env) as client:

        def lost() -> bool:
            return any(a.state == "lost" for a in client.job(seen["job_id"]).allocations)

        seen["lost_after_s"] = _since(killed) if _until(lost, LOST_TIMEOUT_S) else None
        second = _until(lambda: _new_run(runs, {first["allocation_id"]}), RUN_TIMEOUT_S)
        seen["second_run"] = second
        if second is not None:
            seen["second_run_after_s"] = _since(killed)
            _until(lambda: client.job(seen["job_id"]).terminal, FINISH_TIMEOUT_S)
    return seen


def _new_run(runs: Path, seen_allocations: set[str]) -> dict[str, Any] | None:
    """A run noted in ``runs`` by an allocation not in ``seen_allocations``."""
    for path in sorted(runs.glob("*.json")):
        if path.stem not in seen_allocations:
            return dict(json.loads(path.read_text()))
    return None


def _stop(groups: dict[str, Group], head: RayStart) -> dict[str, int | None]:
    """Stop what is left as its owner would: Ctrl-C for the scheduler, SIGTERM for agents
    (each then stops its raylet), and the head last."""
    for group in groups.values():
        group.signal(signal.SIGINT if group.name == "scheduler" else signal.SIGTERM)
    codes: dict[str, int | None] = {}
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, group in groups.items():
        try:
            code = group.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            code = None
        if not name.startswith("machine-"):
            codes[name] = code
    codes["head"] = head.stop(timeout_s=STOP_TIMEOUT_S)
    return codes


# --- the tests that judge it -------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_mode_run() -> Iterator[dict[str, Any]]:
    with scenario_result(
        "tests.integration.test_ray_mode",
        work_prefix="depin-raymode-",
        timeout_s=SCENARIO_TIMEOUT_S,
        tools=("unshare", "nsenter", "ip"),
        drop_env=("RAY_AUTH_TOKEN", "DEPIN_RAY_ADDRESS", "DEPIN_DATABASE_URL", "DEPIN_API_URL"),
        reaping_init=True,
    ) as seen:
        yield seen


def _allocations(seen: dict[str, Any]) -> list[dict[str, Any]]:
    return list(seen["job"]["allocations"])


@pytest.mark.ray
def test_each_agent_heartbeats_in_ray_mode(ray_mode_run: dict) -> None:
    agents = {name: state["agent"] for name, state in ray_mode_run["node_states"].items()}
    assert agents == {"paris": "ray", "frankfurt": "ray"}


@pytest.mark.ray
def test_the_job_runs_on_the_raylet_of_the_node_it_was_placed_on(ray_mode_run: dict) -> None:
    seen = ray_mode_run
    first, victim, survivor = seen["first_run"], seen["victim"], seen["survivor"]
    allocation = _allocations(seen)[0]
    assert allocation["id"] == int(first["allocation_id"])
    assert allocation["node_id"] == seen["nodes"][victim] == int(first["node_id"])
    # Its process descends from that node's agent (agent, ray start, raylet, worker, job).
    assert seen["agent_pids"][victim] in first["ancestors"]
    assert seen["agent_pids"][survivor] not in first["ancestors"]


@pytest.mark.ray
def test_killing_an_agent_takes_its_raylet_and_its_work_down(ray_mode_run: dict) -> None:
    seen = ray_mode_run
    assert any("raylet" in cmd for cmd in seen["victim_processes"])
    assert seen["node_left"] == []
    assert seen["node_gone_after_s"] is not None and seen["node_gone_after_s"] < NODE_GONE_WITHIN_S


@pytest.mark.ray
def test_the_killed_agents_allocation_is_lost_within_ttl_and_grace(ray_mode_run: dict) -> None:
    seen = ray_mode_run
    assert seen["lost_after_s"] is not None and seen["lost_after_s"] < LOST_WITHIN_S
    assert seen["node_states"][seen["victim"]]["status"] == "offline"
    assert seen["node_states"][seen["survivor"]]["status"] == "active"


@pytest.mark.ray
def test_the_job_completes_on_the_other_nodes_raylet(ray_mode_run: dict) -> None:
    seen = ray_mode_run
    last, run, survivor = _allocations(seen)[-1], seen["second_run"], seen["survivor"]
    assert seen["job"]["state"] == "succeeded"
    assert last["state"] == "succeeded" and last["exit_code"] == 0
    assert last["node_id"] == seen["nodes"][survivor]
    assert run is not None and int(run["allocation_id"]) == last["id"]
    assert seen["agent_pids"][survivor] in run["ancestors"]
    assert json.loads(last["output_tail"]) == run  # what the job printed, as it ran


@pytest.mark.ray
def test_the_job_is_charged_once_and_the_first_provider_is_unpaid(ray_mode_run: dict) -> None:
    seen = ray_mode_run
    *lost, last = _allocations(seen)
    assert lost and all(a["state"] == "lost" and not a["cost_micro_usd"] for a in lost)
    assert {a["node_id"] for a in lost} == {seen["nodes"][seen["victim"]]}
    balances, cost = seen["balances"], last["cost_micro_usd"]
    assert cost > 0
    assert balances["dev"]["spent"] == cost and balances["dev"]["held"] == 0
    # Paid on the receipt signed with the key that only the survivor's machine holds.
    assert balances[PROVIDERS[seen["survivor"]]]["received"] == cost
    assert balances[PROVIDERS[seen["victim"]]]["received"] == 0


@pytest.mark.ray
def test_a_job_is_not_placed_again_on_the_node_that_just_died(ray_mode_run: dict) -> None:
    assert len(_allocations(ray_mode_run)) == 2


@pytest.mark.ray
def test_depin_ledger_verify_passes(ray_mode_run: dict) -> None:
    verify = ray_mode_run["ledger_verify"]
    assert verify["exit_code"] == 0, verify["stderr"]
    assert verify["json"]["ok"] is True


@pytest.mark.ray
def test_everything_stops_when_asked(ray_mode_run: dict) -> None:
    # The surviving agent drains and stops its raylet; `ray start --block` on the head exits 1
    # after its drain, by design.
    assert ray_mode_run["exit_codes"] == {
        ray_mode_run["victim"]: -signal.SIGKILL,
        ray_mode_run["survivor"]: 0,
        "scheduler": 0,
        "head": 1,
    }
    assert ray_mode_run["stop_s"] < STOP_TIMEOUT_S
    assert ray_mode_run["leftovers"] == []


def test_a_node_started_by_raystart_dies_with_the_process_that_started_it(
    tmp_path: Path,
) -> None:
    """Without Ray (``sleep`` stands in for ``ray start``): its own session keeps it out of
    its starter's process group, so only PR_SET_PDEATHSIG ends it with a starter killed
    with SIGKILL."""
    starter = (
        "import sys, time\n"
        "from providers.raylet import RayStart\n"
        "node = RayStart(['sleep', '60'], {'PATH': '/usr/bin:/bin'})\n"
        "node.start()\n"
        "print(node.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", starter],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    node_pid = None
    try:
        assert proc.stdout is not None
        node_pid = int(proc.stdout.readline())
        assert is_alive(node_pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        assert _until(lambda: not is_alive(node_pid), 5), "the node outlived its starter"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if node_pid is not None and is_alive(node_pid):
            os.killpg(node_pid, signal.SIGKILL)


if __name__ == "__main__":
    write_result(scenario)
