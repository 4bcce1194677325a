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

import logging
import os
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import ray
import ray.exceptions

from depin.errors import ExecutionError
from depin.limits import ABANDON_WAIT_S, STOP_POLL_S
from depin.receipts import ReceiptSigner, sign_acceptance, sign_usage
from depin.runtime.process import run_command
from depin.runtime.work import Launch, Outcome

RESOURCE_PREFIX = "depin_node:"
# Ray errors that mean the node or worker died, not the job: the allocation is lost.
LOST_ERRORS: tuple[type[BaseException], ...] = (
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.NodeDiedError,
    ray.exceptions.ObjectLostError,
    ray.exceptions.TaskUnschedulableError,
)


def node_resource(node_id: int) -> str:
    return f"{RESOURCE_PREFIX}{node_id}"


def run_with_receipts(
    command: Sequence[str],
    ids: Mapping[str, str],
    time_limit_s: int,
    signer: ReceiptSigner | None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Run an allocation on this node, signing its acceptance first and its usage after.

    Without the provider's key on this machine the result carries no receipts,
    and the market will not pay for the work.
    """
    private = signer.private_key() if signer is not None else None
    acceptance = None
    if private is not None and signer is not None:
        acceptance = sign_acceptance(private, signer.facts, at=datetime.now(UTC)).to_json()
    result = run_command(command, ids, time_limit_s, should_stop)
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


@ray.remote(num_cpus=0)
class StopList:
    """The allocations a driver wants stopped (their owners cancelled the jobs). Running
    allocations ask it; a stopped one ends like any other, with its receipts, so the
    provider is paid for the time it ran."""

    def __init__(self) -> None:
        self._ids: set[int] = set()

    def stop(self, allocation_ids: Sequence[int]) -> None:
        self._ids.update(allocation_ids)

    def stopped(self, allocation_id: int) -> bool:
        return allocation_id in self._ids


def _asker(stop_list: str, allocation_id: int) -> Callable[[], bool]:
    """``should_stop`` for one allocation. The driver makes its stop list (a named actor)
    only when it first stops something; until then, or once the driver is gone, the
    answer is no."""
    found: list[Any] = []

    def should_stop() -> bool:
        try:
            if not found:
                found.append(ray.get_actor(stop_list))
            return bool(ray.get(found[0].stopped.remote(allocation_id), timeout=STOP_POLL_S))
        except ValueError:  # no such actor (yet)
            return False
        except (ray.exceptions.RayError, TimeoutError):
            found.clear()
            return False

    return should_stop


@ray.remote(num_cpus=0, max_retries=0)
def _run_allocation(
    command: Sequence[str],
    ids: Mapping[str, str],
    time_limit_s: int,
    signer: ReceiptSigner | None,
    stop_list: str,
    allocation_id: int,
) -> dict[str, Any]:
    return run_with_receipts(command, ids, time_limit_s, signer, _asker(stop_list, allocation_id))


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
        self._stop_list = f"depin-stops-{uuid.uuid4().hex}"  # the StopList actor's name
        self._stops: Any = None  # the actor, made when something is first stopped

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
        self._owns_ray, self._stops = False, None
        self.start(node_gpus)
        return True

    def shutdown(self) -> None:
        if self._stops is not None and ray.is_initialized():
            ray.kill(self._stops)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray, self._stops = False, None

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
        ).remote(
            launch.command,
            ids,
            launch.time_limit_s,
            launch.receipts,
            self._stop_list,
            launch.allocation_id,
        )
        self._running[ref] = launch

    def stop(self, allocation_ids: Sequence[int]) -> None:
        """Ask these running allocations to stop; each ends within ``STOP_POLL_S`` or so and
        is reported by ``poll`` like any other."""
        mine = {launch.allocation_id for launch in self._running.values()}
        wanted = [a for a in allocation_ids if a in mine]
        if not wanted:
            return
        if self._stops is None:
            self._stops = StopList.options(name=self._stop_list).remote()  # type: ignore[attr-defined]
        self._stops.stop.remote(wanted)

    def drop(self, allocation_ids: Sequence[int]) -> None:
        """Forget allocations the market gave up on (their node went silent): their tasks are
        cancelled, so they cannot run the job again should the node come back."""
        gone = set(allocation_ids)
        for ref, launch in list(self._running.items()):
            if launch.allocation_id in gone:
                ray.cancel(ref)  # a KeyboardInterrupt in the task, if it runs: its group killed
                del self._running[ref]

    def abandon(self) -> list[Launch]:
        """Cancel every running allocation, waiting up to ``ABANDON_WAIT_S`` for their
        commands to be killed; returns what was running."""
        launches = list(self._running.values())
        refs = list(self._running)
        for ref in refs:
            ray.cancel(ref)  # a KeyboardInterrupt in the task: it kills its command's group
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=ABANDON_WAIT_S)
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
            return Outcome(
                launch.allocation_id,
                now,
                now,
                None,
                "",
                error_line(exc),
                lost=True,
                node_id=launch.node_id,
            )
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
