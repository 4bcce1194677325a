"""Launching and watching allocations on Ray.

A depin node is a Ray custom resource ``depin_node:<node_id>`` whose quantity
is the node's GPU count. An allocation is a Ray task that asks for
``{"depin_node:<node_id>": gpus}``, so Ray runs it on the raylet that the
provider's agent started with that resource, and never runs more GPUs' worth
of work there than the node has.

Without ``DEPIN_RAY_ADDRESS`` the executor starts a local Ray instance that
advertises every registered node (logical GPUs on this machine); with it, it
joins the cluster and can reach the nodes whose agents have joined.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import ray
import ray.exceptions

from depin.errors import ExecutionError
from depin.receipts import ReceiptSigner, sign_acceptance, sign_usage
from depin.runtime.work import Launch, Outcome

RESOURCE_PREFIX = "depin_node:"
OUTPUT_TAIL_BYTES = 4096
_READ_CHUNK_BYTES = 65536
# Ray errors that mean the node or worker died, not the job: the allocation is lost.
LOST_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.TaskUnschedulableError,
)


def node_resource(node_id: int) -> str:
    return f"{RESOURCE_PREFIX}{node_id}"


def _interpreter(command: Sequence[str]) -> list[str]:
    """``python`` in a command means the interpreter the worker runs under."""
    argv = list(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _tail_reader(stream: Any, tail: bytearray) -> None:
    # read1: what has arrived, without waiting for a full chunk.
    for chunk in iter(lambda: stream.read1(_READ_CHUNK_BYTES), b""):
        tail += chunk
        del tail[:-OUTPUT_TAIL_BYTES]


# What a job's environment holds: built from nothing, so the driver's DEPIN_HOME,
# database URL or keys are not handed to it. Hygiene, not isolation: the job runs as
# the worker's user. ``python`` resolves to the worker's interpreter.
JOB_PATH = "/usr/local/bin:/usr/bin:/bin"
JOB_LANG = "C.UTF-8"


def job_environment(home: str, ids: Mapping[str, str]) -> dict[str, str]:
    """PATH, LANG, HOME (the job's own working directory) and the job's ``DEPIN_*`` ids."""
    path = os.pathsep.join([os.path.dirname(sys.executable), JOB_PATH])
    return {"PATH": path, "LANG": JOB_LANG, "HOME": home, **ids}


def _kill_group(pgid: int) -> None:
    # ProcessLookupError: nothing of the group is left.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_command(
    command: Sequence[str], ids: Mapping[str, str], time_limit_s: int
) -> dict[str, Any]:
    """Run ``command`` to completion or its time limit; keep the tail of its output.

    It runs in a fresh working directory (its HOME too, removed afterwards) with
    an environment built from nothing (``job_environment``). This is the body
    of the Ray task; it also runs in-process in tests.
    """
    started = datetime.now(UTC)
    argv = _interpreter(command)
    with tempfile.TemporaryDirectory(prefix="depin-job-") as workdir:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env=job_environment(workdir, ids),
                start_new_session=True,  # its own process group: a timeout kills its children
            )
        except OSError as exc:
            return {
                "started_at": started,
                "ended_at": datetime.now(UTC),
                "exit_code": 127,
                "output_tail": "",
                "error": f"cannot start {argv[0]!r}: {exc.strerror}",
            }
        tail = bytearray()
        reader = threading.Thread(target=_tail_reader, args=(proc.stdout, tail), daemon=True)
        reader.start()
        error = None
        try:
            exit_code = proc.wait(timeout=time_limit_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            exit_code = proc.wait()
            error = f"killed at its time limit of {time_limit_s} s"
        # The job ends with its command: what it left running in the background would
        # outlive the allocation (unpaid) and hold the output pipe open.
        _kill_group(proc.pid)
        reader.join(timeout=5)
    output = bytes(tail).decode("utf-8", errors="replace")
    return {
        "started_at": started,
        "ended_at": datetime.now(UTC),
        "exit_code": exit_code,
        "output_tail": output,
        "error": error,
    }


def run_with_receipts(
    command: Sequence[str], ids: Mapping[str, str], time_limit_s: int, signer: ReceiptSigner | None
) -> dict[str, Any]:
    """Run an allocation on this node, signing its acceptance first and its usage after.

    Without the provider's key on this machine the result carries no receipts,
    and the market will not pay for the work.
    """
    private = signer.private_key() if signer is not None else None
    acceptance = None
    if private is not None and signer is not None:
        acceptance = sign_acceptance(private, signer.facts, at=datetime.now(UTC)).to_json()
    result = run_command(command, ids, time_limit_s)
    result["acceptance_json"], result["usage_json"] = acceptance, None
    if private is not None and signer is not None:
        usage = sign_usage(
            private,
            signer.facts,
            started_at=result["started_at"],
            ended_at=result["ended_at"],
            exit_code=result["exit_code"],
        )
        result["usage_json"] = usage.to_json()
    return result


@ray.remote(num_cpus=0, max_retries=0)
def _run_allocation(
    command: Sequence[str], ids: Mapping[str, str], time_limit_s: int, signer: ReceiptSigner | None
) -> dict[str, Any]:
    return run_with_receipts(command, ids, time_limit_s, signer)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(exc: BaseException) -> str:
    """A Ray error in one line for people: a task's own exception (its traceback's last
    line; the first names the worker process), else the error's first line."""
    lines = [line.strip() for line in _ANSI.sub("", str(exc)).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1] if isinstance(exc, ray.exceptions.RayTaskError) else lines[0]


class RayExecutor:
    """Starts allocations as Ray tasks and reports how they ended."""

    def __init__(self, address: str | None = None) -> None:
        self.address = address
        self._owns_ray = False
        self._advertised: set[int] = set()
        self._running: dict[ray.ObjectRef, Launch] = {}

    # -- the cluster ----------------------------------------------------------------------
    def start(self, node_gpus: Mapping[int, int]) -> None:
        """Connect to Ray, starting a local instance that advertises ``node_gpus``."""
        if ray.is_initialized():
            return
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            if self.address:
                ray.init(address=self.address, logging_level=logging.ERROR, log_to_driver=False)
            else:
                ray.init(
                    resources={node_resource(n): g for n, g in node_gpus.items()},
                    include_dashboard=False,
                    logging_level=logging.ERROR,
                    log_to_driver=False,
                )
                self._owns_ray = True
                self._advertised = set(node_gpus)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = self.address or "a local instance"
            raise ExecutionError(f"cannot start Ray ({where}): {exc}") from exc

    def reachable(self, node_ids: Sequence[int]) -> set[int]:
        """The nodes Ray can run work on now (before the first start: all of them)."""
        if not ray.is_initialized():
            return set(node_ids)
        available = ray.cluster_resources()
        return {n for n in node_ids if node_resource(n) in available}

    def restart_if_idle(self, node_gpus: Mapping[int, int]) -> bool:
        """Restart a local Ray we own so it advertises newly registered nodes."""
        if not (self._owns_ray and ray.is_initialized()) or self._running:
            return False
        if set(node_gpus) <= self._advertised:
            return False
        ray.shutdown()
        self._owns_ray = False
        self.start(node_gpus)
        return True

    def shutdown(self) -> None:
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    # -- allocations ----------------------------------------------------------------------
    @property
    def running(self) -> int:
        return len(self._running)

    def launch(self, launch: Launch) -> None:
        ids = {
            "DEPIN_JOB_ID": str(launch.job_id),
            "DEPIN_ALLOCATION_ID": str(launch.allocation_id),
            "DEPIN_NODE_ID": str(launch.node_id),
            "DEPIN_GPUS": str(launch.gpus),
        }
        ref = _run_allocation.options(
            resources={node_resource(launch.node_id): launch.gpus},
            name=f"depin-job-{launch.job_id}-alloc-{launch.allocation_id}",
        ).remote(launch.command, ids, launch.time_limit_s, launch.receipts)
        self._running[ref] = launch

    def abandon(self) -> list[Launch]:
        """Cancel every running allocation; returns what was running."""
        launches = list(self._running.values())
        for ref in self._running:
            ray.cancel(ref, force=True)
        self._running.clear()
        return launches

    def poll(self, timeout_s: float = 0.0) -> list[Outcome]:
        """Outcomes of the allocations that ended, waiting up to ``timeout_s`` for the first."""
        if not self._running:
            return []
        ready, _ = ray.wait(list(self._running), num_returns=1, timeout=timeout_s)
        if ready:
            ready, _ = ray.wait(list(self._running), num_returns=len(self._running), timeout=0)
        return [self._outcome(ref, self._running.pop(ref)) for ref in ready]

    @staticmethod
    def _outcome(ref: ray.ObjectRef, launch: Launch) -> Outcome:
        now = datetime.now(UTC)
        try:
            r = ray.get(ref)
        except LOST_ERRORS as exc:
            return Outcome(launch.allocation_id, now, now, None, "", error_line(exc), lost=True)
        except ray.exceptions.RayError as exc:
            return Outcome(launch.allocation_id, now, now, None, "", f"ray: {error_line(exc)}")
        return Outcome(
            launch.allocation_id,
            r["started_at"],
            r["ended_at"],
            r["exit_code"],
            r["output_tail"],
            r["error"],
            acceptance_json=r["acceptance_json"],
            usage_json=r["usage_json"],
        )
