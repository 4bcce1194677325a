"""Ray mode: depin nodes' raylets join an operator's token-authenticated head.

The cluster runs in user, network and PID namespaces of its own, to keep Ray on
loopback (``tests.integration.namespaces`` says why). The scenario is this module run
as a script there; it writes what it saw to a JSON file that the tests below judge.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from providers.raylet import (
    LABEL_GPU_MODEL,
    LABEL_REGION,
    LABEL_TIER,
    RESOURCE_PREFIX,
    HealthChecks,
    Raylet,
    RayletSpec,
    RayStart,
    head_command,
    head_env,
    label_value,
    raylet_command,
    raylet_env,
)
from tests.integration.namespaces import (
    RAY_BIN,
    free_port,
    live_processes,
    scenario_result,
    write_result,
)

SCENARIO_TIMEOUT_S = 120
START_TIMEOUT_S = 60
TASK_TIMEOUT_S = 60
DEAD_WITHIN_S = 10.0
DEAD_POLL_S = 0.1
REFUSED_RETRIES = 3
REFUSED_TIMEOUT_S = 40
STOP_TIMEOUT_S = 10
HEALTH = HealthChecks()
NODE_7 = RayletSpec(node_id=7, gpus=1, tier="edge", region="ap-tokyo", gpu_model="L4")
NODE_8 = RayletSpec(node_id=8, gpus=2, tier="regional", region="eu-west", gpu_model="RTX 4090")
NODE_9 = RayletSpec(node_id=9, gpus=1, tier="device", region="us-east", gpu_model="T4")
# Several raylets share one host here: no fixed agent or worker ports, no second log
# monitor, a small object store, one CPU each.
SHARED_HOST_ARGS = (
    "--dashboard-agent-listen-port=0",
    "--min-worker-port=0",
    "--max-worker-port=0",
    "--object-store-memory=100000000",
)
RAYLET_ARGS = (*SHARED_HOST_ARGS, "--num-cpus=1", "--include-log-monitor=false")


# --- the commands, without Ray ---------------------------------------------------------


def test_the_resource_prefix_is_the_executors() -> None:
    from depin.runtime.executor import RESOURCE_PREFIX as EXECUTOR_PREFIX

    assert RESOURCE_PREFIX == EXECUTOR_PREFIX


def test_a_raylet_advertises_its_node_resource_gpus_and_labels() -> None:
    argv = raylet_command(NODE_8, "10.0.0.1:6379", ray_bin="ray", temp_dir="/tmp/r")
    assert argv[:4] == ["ray", "start", "--address=10.0.0.1:6379", "--block"]
    assert '--resources={"depin_node:8": 2}' in argv
    assert "--num-gpus=2" in argv
    assert "--labels=depin.tier=regional,depin.region=eu-west,depin.gpu_model=RTX-4090" in argv
    assert "--temp-dir=/tmp/r" in argv


def test_label_values_are_made_valid_for_ray() -> None:
    assert label_value("Jetson AGX Orin 64GB") == "Jetson-AGX-Orin-64GB"
    assert label_value(" (A100) ") == "A100"
    assert len(label_value("x" * 100)) == 63


def test_the_token_file_outranks_an_inherited_token() -> None:
    env = raylet_env({"RAY_AUTH_TOKEN": "stale", "PATH": "/bin"}, "/etc/depin/ray-token")
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN_PATH"] == "/etc/depin/ray-token"
    assert "RAY_AUTH_TOKEN" not in env and env["PATH"] == "/bin"


def test_health_checks_are_tightened_on_the_head_only() -> None:
    assert head_env({}, None, HEALTH)["RAY_health_check_period_ms"] == "500"
    assert not any(k.startswith("RAY_health_check") for k in raylet_env({}, None))


# --- the scenario, inside the namespaces ------------------------------------------------


def _node_views(nodes: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        n["NodeID"]: {
            "alive": n["Alive"],
            "resources": {k: v for k, v in n["Resources"].items() if k.startswith(RESOURCE_PREFIX)}
            | {"GPU": n["Resources"].get("GPU", 0)},
            "labels": {k: v for k, v in n.get("Labels", {}).items() if k.startswith("depin.")},
        }
        for n in nodes
    }


def _cluster(work: Path, token_path: Path, port: int) -> tuple[RayStart, dict[int, Raylet]]:
    base, address = dict(os.environ), f"127.0.0.1:{port}"
    head_argv = head_command(
        port,
        ray_bin=str(RAY_BIN),
        temp_dir=str(work / "h"),
        node_ip="127.0.0.1",
        extra_args=SHARED_HOST_ARGS,
    )
    head = RayStart(head_argv, head_env(base, str(token_path), HEALTH))
    raylets = {
        spec.node_id: _raylet(spec, address, work, token_path, base) for spec in (NODE_7, NODE_8)
    }
    return head, raylets


def _raylet(
    spec: RayletSpec, address: str, work: Path, token_path: Path, base: dict[str, str]
) -> Raylet:
    return Raylet(
        spec,
        address,
        token_path=str(token_path),
        ray_bin=str(RAY_BIN),
        temp_dir=str(work / f"n{spec.node_id}"),
        node_ip="127.0.0.1",
        extra_args=RAYLET_ARGS,
        base_env=base,
    )


def scenario(work: Path) -> dict[str, Any]:
    """Head, two raylets, a driver; one raylet dies; strangers knock. Returns what was seen."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)  # down in a new netns
    token_path = work / "token"
    token_path.write_text(secrets.token_hex(32))
    token_path.chmod(0o600)
    port = free_port("127.0.0.1")
    address = f"127.0.0.1:{port}"
    head, raylets = _cluster(work, token_path, port)
    seen: dict[str, Any] = {}
    started = time.monotonic()
    try:
        head.start()
        if not head.wait_started(START_TIMEOUT_S):
            return {"error": "head did not start", "output": head.output_tail()}
        seen["head_up_s"] = round(time.monotonic() - started, 2)
        for raylet in raylets.values():
            raylet.start()
        for node_id, raylet in raylets.items():
            if not raylet.wait_started(START_TIMEOUT_S):
                return {"error": f"raylet {node_id} did not join", "output": raylet.output_tail()}
        seen["raylets_up_s"] = round(time.monotonic() - started, 2)
        seen |= _drive(address, raylets, raylet_env(os.environ, str(token_path)))
        seen |= _strangers(address, work)
        stopping = time.monotonic()
        seen["exit_codes"] = {n: r.stop() for n, r in raylets.items()} | {"head": head.stop()}
        seen["stop_s"] = round(time.monotonic() - stopping, 2)
        seen["leftovers"] = live_processes()
    finally:
        for process in (*raylets.values(), head):
            process.stop(timeout_s=STOP_TIMEOUT_S)
    seen["total_s"] = round(time.monotonic() - started, 2)
    return seen


def _drive(address: str, raylets: dict[int, Raylet], env: dict[str, str]) -> dict[str, Any]:
    """The coordinator's part: it holds the token, runs a task, watches a raylet die."""
    os.environ.update(env)  # before Ray reads its configuration
    import ray

    ray.init(address=address, log_to_driver=False)
    try:
        seen: dict[str, Any] = {"driver_node": ray.get_runtime_context().get_node_id()}
        seen["nodes"] = _node_views(ray.nodes())

        @ray.remote(num_cpus=0, max_retries=0)
        def where() -> str:
            return str(ray.get_runtime_context().get_node_id())

        task = where.options(resources={NODE_8.resource: 1}).remote()
        seen["task_ran_on"] = ray.get(task, timeout=TASK_TIMEOUT_S)

        victim, victim_id = raylets[NODE_7.node_id], _node_with(seen["nodes"], NODE_7.resource)
        assert victim.pid is not None
        killed = time.monotonic()
        os.killpg(victim.pid, signal.SIGKILL)  # no goodbye to the GCS: only health checks see it
        seen["dead_after_s"] = None
        while time.monotonic() < killed + DEAD_WITHIN_S * 2:
            if not _node_views(ray.nodes())[victim_id]["alive"]:
                seen["dead_after_s"] = round(time.monotonic() - killed, 2)
                break
            time.sleep(DEAD_POLL_S)
        seen["victim_alive"] = victim.alive()
        seen["survivor_alive"] = raylets[NODE_8.node_id].alive()
    finally:
        ray.shutdown()
    return seen


def _strangers(address: str, work: Path) -> dict[str, Any]:
    """Drivers without the token or with another one, and a raylet with another one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # A refused process retries about once a second, 20 times by default, before it gives up.
    env["RAY_gcs_server_port_wait_time_s"] = str(REFUSED_RETRIES)
    other_token = work / "other-token"
    other_token.write_text(secrets.token_hex(32))
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED')"
    drivers = {
        "no_token": env,
        "wrong_token": raylet_env(env, str(other_token)),
    }
    started = time.monotonic()
    running = {
        name: subprocess.Popen(
            [sys.executable, "-c", code],
            env=driver_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for name, driver_env in drivers.items()
    }
    raylet = _raylet(NODE_9, address, work, other_token, env)
    raylet.start()
    seen: dict[str, Any] = {"stranger_raylet": {"joined": raylet.wait_started(REFUSED_TIMEOUT_S)}}
    seen["stranger_raylet"] |= {"exit_code": raylet.stop(), "output": raylet.output_tail()}
    for name, driver in running.items():
        try:
            out, _ = driver.communicate(timeout=REFUSED_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            out, _ = driver.communicate()
        seen[name] = {"connected": "CONNECTED" in out, "exit_code": driver.returncode}
        seen[name]["output"] = out[-3000:]
    seen["strangers_s"] = round(time.monotonic() - started, 2)
    return seen


def _node_with(nodes: dict[str, dict[str, Any]], resource: str) -> str:
    (node_id,) = [n for n, view in nodes.items() if resource in view["resources"]]
    return node_id


# --- the tests that judge it -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster_run() -> Iterator[dict[str, Any]]:
    with scenario_result(
        "tests.integration.test_raylet",
        work_prefix="depin-raylet-",
        timeout_s=SCENARIO_TIMEOUT_S,
    ) as seen:
        yield seen


def _node_of(seen: dict[str, Any], spec: RayletSpec) -> tuple[str, dict[str, Any]]:
    node_id = _node_with(seen["nodes"], spec.resource)
    return node_id, seen["nodes"][node_id]


@pytest.mark.ray
def test_each_raylet_advertises_its_depin_node_gpus_and_labels(cluster_run: dict) -> None:
    for spec in (NODE_7, NODE_8):
        _, view = _node_of(cluster_run, spec)
        assert view["resources"] == {spec.resource: spec.gpus, "GPU": spec.gpus}
        assert view["labels"] == {
            LABEL_TIER: spec.tier,
            LABEL_REGION: spec.region,
            LABEL_GPU_MODEL: label_value(spec.gpu_model),
        }


@pytest.mark.ray
def test_a_task_for_a_depin_node_runs_on_that_nodes_raylet(cluster_run: dict) -> None:
    node_8, _ = _node_of(cluster_run, NODE_8)
    assert cluster_run["task_ran_on"] == node_8
    assert cluster_run["driver_node"] != node_8  # the driver sits on the head


@pytest.mark.ray
def test_a_killed_raylet_is_seen_dead_within_the_health_checks(cluster_run: dict) -> None:
    assert cluster_run.get("dead_after_s") is not None, "the killed raylet never showed dead"
    assert cluster_run["dead_after_s"] < DEAD_WITHIN_S
    assert cluster_run["victim_alive"] is False
    assert cluster_run["survivor_alive"] is True


@pytest.mark.ray
@pytest.mark.parametrize("driver", ["no_token", "wrong_token"])
def test_a_driver_without_the_token_is_refused(cluster_run: dict, driver: str) -> None:
    assert cluster_run[driver]["connected"] is False
    assert "InvalidAuthToken" in cluster_run[driver]["output"]


@pytest.mark.ray
def test_a_raylet_with_another_token_cannot_join(cluster_run: dict) -> None:
    stranger = cluster_run["stranger_raylet"]
    assert stranger["joined"] is False and stranger["exit_code"] != 0
    assert "InvalidAuthToken" in stranger["output"]


@pytest.mark.ray
def test_raylets_and_head_stop_when_asked(cluster_run: dict) -> None:
    # `ray start --block` drains on SIGTERM and then exits 1 by design; -9 would mean SIGKILL.
    assert cluster_run["exit_codes"] == {"7": -signal.SIGKILL, "8": 1, "head": 1}
    assert cluster_run["stop_s"] < STOP_TIMEOUT_S
    assert cluster_run["leftovers"] == []


if __name__ == "__main__":
    write_result(scenario)
