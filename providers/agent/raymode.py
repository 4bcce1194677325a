"""Ray mode: the agent joins its node to one operator's Ray cluster, and heartbeats.

The raylet it starts advertises ``depin_node:<id>`` with the node's GPUs and labels for
tier, region and GPU model, and authenticates with the operator's token. The
coordinator's executor then launches work on it as on any raylet; the Ray workers
inherit this agent's ``DEPIN_HOME``, so receipts are signed here with the provider's
key. Every raylet of a cluster can run code on every other: Ray mode is for one
operator's own fleet, never for strangers (pull mode is).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from depin.errors import ConfigError, ExecutionError
from depin.runtime.agentwire import NodeReport
from providers.agent.hardware import Machine
from providers.agent.link import Coordinator
from providers.raylet import Raylet, RayletSpec

log = logging.getLogger("depin.agent")
JOIN_TIMEOUT_S = 120.0


def serve_ray(
    coordinator: Coordinator,
    machine: Machine,
    node_id: int,
    *,
    address: str,
    token_path: str | None,
    interval_s: float,
    stopping: threading.Event,
) -> None:
    """Start the raylet, heartbeat while it lives, stop it when ``stopping`` is set."""
    ray_bin = _ray_bin()
    if ray_bin is None:
        raise ConfigError("Ray mode needs the `ray` command (pip install 'ray[default]')")
    node = coordinator.node(node_id)
    spec = RayletSpec(node_id, node.gpus, node.tier, node.region, node.gpu_model)
    report = NodeReport(
        mode="ray",
        gpus=machine.gpus,
        gpu_model=machine.gpu_model,
        simulated=machine.simulated,
        interval_s=interval_s,
    )
    coordinator.node_heartbeat(node_id, report)  # a refused node ends here, before Ray starts

    def beat() -> None:
        try:
            coordinator.node_heartbeat(node_id, report)
        except Exception as exc:  # the coordinator away: Ray keeps running its work
            log.warning("node %s: heartbeat failed: %s", node_id, exc)

    with Raylet(spec, address, token_path=token_path, ray_bin=ray_bin) as raylet:  # started
        if not _joined(raylet, address, interval_s, beat, stopping):
            return
        log.info("node %s joined the Ray cluster at %s as %s", node_id, address, spec.resource)
        while not stopping.wait(interval_s):
            if not raylet.alive():
                raise ExecutionError(f"the raylet exited: {_last_line(raylet)}")
            beat()
        # Stopping: the node goes offline now, before its raylet (and the work on it) goes.
        leaving = report.model_copy(update={"leaving": True})
        try:
            coordinator.node_heartbeat(node_id, leaving)
        except Exception as exc:
            log.warning("node %s: could not say it leaves: %s", node_id, exc)


def _joined(
    raylet: Raylet,
    address: str,
    interval_s: float,
    beat: Callable[[], None],
    stopping: threading.Event,
) -> bool:
    """Wait for the raylet to join the cluster (False: asked to stop first), heartbeating.

    Joining takes 10-20 s on a small machine, up to ``JOIN_TIMEOUT_S`` on a slow link; an
    agent silent that long would be counted as missing beats, costing its node uptime, and
    past TTL + grace the node would be marked offline while its agent is at work.
    """
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not raylet.wait_started(max(0.0, min(interval_s, deadline - time.monotonic()))):
        if not raylet.alive() or time.monotonic() >= deadline:
            raise ExecutionError(
                f"the raylet did not join the cluster at {address}: {_last_line(raylet)}"
            )
        if stopping.is_set():
            return False
        beat()
    return True


def _ray_bin() -> str | None:
    """The ``ray`` command installed with this interpreter's Ray, else the one on PATH.

    Beside the interpreter first: the raylet starts its workers with the Python that runs
    ``ray``, and they must import this Ray and depin; and a virtual environment's bin/ is
    often not on PATH (a service that runs ``/opt/depin/.venv/bin/depin agent run``).
    """
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.is_file() else shutil.which("ray")


def _last_line(raylet: Raylet) -> str:
    lines = [line for line in raylet.output_tail().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"
