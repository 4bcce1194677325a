"""Ray mode end to end: two agents' raylets join a token-authenticated head, the scheduler
drives that cluster, and the agent running a job is killed with SIGKILL.

The market is one SQLite file shared by every process. Node "paris" (provider acme) and
node "frankfurt" (provider bolt) have one GPU each; their agents run ``depin agent run
--ray-address ...`` and start the raylets; ``depin scheduler run`` joins the cluster as
its driver. A job near Paris runs on paris's raylet; when paris's agent is killed, the
job must finish on frankfurt, be charged once, and leave acme unpaid.

As in ``test_raylet``, the cluster lives in user, network and PID namespaces of its own
(Ray rewrites 127.0.0.1 to the machine's address and listens on every interface), and
this module, run as a script there, is the scenario; it writes what it saw to a JSON
file that the tests below judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pytest

from providers.raylet import HealthChecks, RayStart, head_command, head_env

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
# --kill-child: when unshare dies, so does the namespace's PID 1, and with it the rest.
UNSHARE = (
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
)
SCENARIO_TIMEOUT_S = 110  # the hard cap on the whole scenario, from outside the namespace
START_TIMEOUT_S = 60  # the head; the agents' raylets joining it
RUN_TIMEOUT_S = 40  # from submission (or a kill) to a run's start on a raylet
FINISH_TIMEOUT_S = 40  # from the second run's start to the job's end
STOP_TIMEOUT_S = 15
POLL_S = 0.2
NODE_GONE_WITHIN_S = 5.0
JOB_SLEEP_S = 10
HEARTBEAT_INTERVAL_S = 0.5
NODE_TTL_S = 2
NODE_GRACE_S = 2
HEALTH = HealthChecks()  # a killed raylet is seen dead in about 1.5 s
JOINED = "joined the Ray cluster"  # the agent's log line once its raylet is up
PARIS = (48.8566, 2.3522)
FRANKFURT = (50.11, 8.68)
# The job: note where it runs (its node, allocation and process ancestry) in RUNS_DIR
# before anyone can kill it, print the same, and sleep.
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


# --- the scenario, inside the namespaces ------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _depin(*args: str) -> list[str]:
    return [sys.executable, "-m", "cli", *args]


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

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signum)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def _stat(pid: int) -> tuple[str, int] | None:
    """A live process's state and parent, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    # Orphans are reparented to PID 1 (the scenario), which does not reap them: a zombie is gone.
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def _cmdline(pid: int) -> str:
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def _descendants(root: int) -> list[int]:
    parents = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and (stat := _stat(int(proc.name))) is not None:
            parents[int(proc.name)] = stat[1]
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _live_processes() -> list[str]:
    """Every live process in this PID namespace but this one (PID 1), by command line."""
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and p.name != "1"]
    return [_cmdline(pid) for pid in pids if _alive(pid)]


def _until(check: Callable[[], Any], timeout_s: float) -> Any:
    """``check()``'s first truthy value within ``timeout_s``, else None."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(POLL_S)
    return None


def _market(home: Path) -> dict[str, int]:
    """`depin init`, two providers with a node each, and a developer with money; node ids."""
    from depin.client import Client
    from depin.spec import NodeSpec

    def node(provider: str, at: tuple[float, float], price: str, region: str) -> NodeSpec:
        fields = {
            "provider": provider,
            "name": provider,
            "gpu_model": "L4",
            "gpus": 1,
            "price_usd_per_gpu_hour": Decimal(price),
            "lat": at[0],
            "lon": at[1],
            "tier": "edge",
            "region": region,
            "network": "fiber",
        }
        return NodeSpec.model_validate(fields)

    with Client(home=str(home)) as client:
        client.init()
        for name in ("acme", "bolt", "dev"):
            client.new_key(name)
        client.register_provider("acme", key="acme")
        client.register_provider("bolt", key="bolt")
        ids = {
            "paris": client.add_node(node("acme", PARIS, "0.40", "eu-west")).id,
            "frankfurt": client.add_node(node("bolt", FRANKFURT, "0.60", "eu-central")).id,
        }
        client.create_account("dev", key="dev")
        client.deposit("dev", "10")
    return ids


def _submit(home: Path, runs: Path) -> int:
    from depin.client import Client
    from depin.spec import JobSpec

    spec = JobSpec.model_validate(
        {
            "name": "failover",
            "command": ["python", "-c", JOB_CODE, str(runs), str(JOB_SLEEP_S)],
            "resources": {"gpus": 1, "gpu_models": ["L4"]},
            "placement": {"near": [{"lat": PARIS[0], "lon": PARIS[1]}]},
            "max_duration_s": 120,
        }
    )
    with Client(home=str(home)) as client:
        return client.submit(spec, account="dev").id


def _run_on(runs: Path, excluding: set[str]) -> dict[str, Any] | None:
    """The first run noted in ``runs`` but not in ``excluding`` (by allocation id)."""
    for path in sorted(runs.glob("*.json")):
        if path.stem not in excluding:
            return dict(json.loads(path.read_text()))
    return None


def scenario(work: Path) -> dict[str, Any]:
    """The market, the cluster, a job, a kill. Returns what was seen."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # down in a new netns
    home, runs = work / "depin", work / "runs"
    runs.mkdir()
    token_path = work / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    address = f"127.0.0.1:{_free_port()}"
    # Every process: one market, one token, Ray's files under work/ (not /tmp/ray).
    base = dict(os.environ) | {"DEPIN_HOME": str(home), "RAY_TMPDIR": str(work)}
    ray_env = base | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    started = time.monotonic()
    seen: dict[str, Any] = {"nodes": _market(home)}
    head = RayStart(
        head_command(int(address.rpartition(":")[2]), ray_bin=str(RAY_BIN), node_ip="127.0.0.1"),
        head_env(base, str(token_path), HEALTH),
    )
    groups: dict[str, Group] = {}
    try:
        head.start()
        if not head.wait_started(START_TIMEOUT_S):
            return {"error": "the head did not start", "output": head.output_tail()}
        seen["head_up_s"] = round(time.monotonic() - started, 2)
        for name, node_id in seen["nodes"].items():
            argv = _depin(
                "agent", "run", "--node", str(node_id), "--ray-address", address,
                "--ray-token-path", str(token_path), "--simulate-gpus", "1",
                "--heartbeat-interval-s", str(HEARTBEAT_INTERVAL_S),
            )  # fmt: skip
            groups[name] = Group.start(f"agent-{name}", argv, base, work)
        coordinator = ray_env | {
            "DEPIN_RAY_ADDRESS": address,
            "DEPIN_NODE_TTL_S": str(NODE_TTL_S),
            "DEPIN_NODE_GRACE_S": str(NODE_GRACE_S),
        }
        groups["scheduler"] = Group.start("scheduler", _depin("scheduler", "run"), coordinator, work)
        for name in seen["nodes"]:
            if not _until(lambda g=groups[name]: JOINED in g.output(), START_TIMEOUT_S):
                return {"error": f"agent {name} did not join", "output": groups[name].output()}
        seen["agents_up_s"] = round(time.monotonic() - started, 2)
        seen["agent_pids"] = {name: groups[name].proc.pid for name in seen["nodes"]}
        seen |= _failover(home, runs, groups, seen["nodes"])
        seen["ledger_verify"] = _cli(base, "ledger", "verify", "--json")
        seen["job_status"] = _cli(base, "job", "status", str(seen["job_id"]), "--json")
        seen["balances"] = _cli(base, "ledger", "show", "--limit", "1", "--json")
        seen["node_list"] = _cli(base, "node", "list", "--json")
        stopping = time.monotonic()
        seen["exit_codes"] = _stop(groups, head)
        seen["stop_s"] = round(time.monotonic() - stopping, 2)
        seen["leftovers"] = _live_processes()
        seen["logs"] = {name: group.output() for name, group in groups.items()}
    finally:
        for group in groups.values():
            group.kill()
        head.stop(timeout_s=STOP_TIMEOUT_S)
    seen["total_s"] = round(time.monotonic() - started, 2)
    return seen


def _failover(
    home: Path, runs: Path, groups: dict[str, Group], nodes: dict[str, int]
) -> dict[str, Any]:
    """Submit the job; once it runs, kill its agent; follow the job to its end."""
    from depin.client import Client

    seen: dict[str, Any] = {"job_id": _submit(home, runs)}
    submitted = time.monotonic()
    first = _until(lambda: _run_on(runs, set()), RUN_TIMEOUT_S)
    if first is None:
        return seen | {"error": "the job never started", "output": groups["scheduler"].output()}
    seen["first_run"], seen["first_run_after_s"] = first, round(time.monotonic() - submitted, 2)
    victim = next(name for name, node_id in nodes.items() if str(node_id) == first["node_id"])
    agent = groups[victim]
    node_processes = _descendants(agent.proc.pid)
    seen["victim"], seen["victim_processes"] = victim, [_cmdline(p) for p in node_processes]
    killed = time.monotonic()
    agent.kill()  # SIGKILL to the agent's group, as the OOM killer or a crash would
    gone = _until(lambda: not any(_alive(p) for p in node_processes), NODE_GONE_WITHIN_S)
    seen["node_gone_after_s"] = round(time.monotonic() - killed, 2) if gone else None
    seen["node_left"] = [_cmdline(p) for p in node_processes if _alive(p)]
    with Client(home=str(home)) as client:

        def lost() -> bool:
            allocations = client.job(seen["job_id"]).allocations
            return any(a.state == "lost" for a in allocations)

        seen["lost_after_s"] = _until(lambda: lost() and round(time.monotonic() - killed, 2), 20)
        second = _until(lambda: _run_on(runs, {first["allocation_id"]}), RUN_TIMEOUT_S)
        seen["second_run"] = second
        if second is not None:
            seen["second_run_after_s"] = round(time.monotonic() - killed, 2)
            _until(lambda: client.job(seen["job_id"]).terminal, FINISH_TIMEOUT_S)
        seen["victim_status"] = {n.id: n.status for n in client.nodes()}[nodes[victim]]
    return seen


def _cli(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = subprocess.run(
        _depin(*args), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = None
    return {"exit_code": done.returncode, "json": data, "stderr": done.stderr[-2000:]}


def _stop(groups: dict[str, Group], head: RayStart) -> dict[str, int | None]:
    """Stop what is left as its owner would: Ctrl-C for the scheduler, SIGTERM for agents."""
    for group in groups.values():
        group.signal(signal.SIGINT if group.name == "scheduler" else signal.SIGTERM)
    codes: dict[str, int | None] = {}
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for name, group in groups.items():
        try:
            codes[name] = group.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            codes[name] = None
    codes["head"] = head.stop(timeout_s=STOP_TIMEOUT_S)
    return codes


# --- the tests that judge it -------------------------------------------------------------


def _unshare_problem() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare and ip (util-linux, iproute2)"
    if not RAY_BIN.exists():
        return f"needs the ray CLI next to the interpreter ({RAY_BIN})"
    probe = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"user namespaces unavailable: {probe.stderr.strip()}"
    return None


@pytest.fixture(scope="module")
def ray_mode_run() -> Iterator[dict[str, Any]]:
    problem = _unshare_problem()
    if problem:
        pytest.skip(problem)
    # Short, so Ray's Unix socket paths under it stay below 108 bytes (not pytest's tmp_path).
    work = Path(tempfile.mkdtemp(prefix="depin-raymode-", dir="/tmp"))
    env = os.environ | {"HOME": str(work / "home")}  # no developer's ~/.ray/auth_token
    for name in ("RAY_ADDRESS", "DEPIN_RAY_ADDRESS", "DEPIN_DATABASE_URL", "DEPIN_API_URL"):
        env.pop(name, None)
    argv = [*UNSHARE, sys.executable, "-m", "tests.integration.test_ray_mode", str(work)]
    proc = subprocess.Popen(
        argv,
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            output, _ = proc.communicate(timeout=SCENARIO_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the scenario ran past {SCENARIO_TIMEOUT_S} s")
        result_path = work / "result.json"
        if not result_path.exists():
            pytest.fail(f"scenario wrote no result:\n{output.decode(errors='replace')[-4000:]}")
        seen: dict[str, Any] = json.loads(result_path.read_text())
        if "error" in seen:
            pytest.fail(f"{seen['error']}:\n{seen.get('output', '')}")
        yield seen
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main(work: Path) -> None:
    try:
        seen = scenario(work)
    except Exception:
        seen = {"error": "the scenario raised", "output": traceback.format_exc()}
    (work / "result.json").write_text(json.dumps(seen, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
