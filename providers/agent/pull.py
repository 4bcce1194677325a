"""Pull mode: the agent asks the coordinator for work, runs it sandboxed, and reports.

    heartbeat thread   every interval: alive, what the machine has, what it runs; the
                       reply names allocations to stop. Cut off from the coordinator
                       for longer than its TTL + grace, the agent stops its jobs itself:
                       the market has given them to another node by then (fencing).
    main loop          the long-poll for work: each reserved allocation starts a run
    one thread a run   sign the acceptance -> run the command in the sandbox, streaming
                       its output -> sign the usage receipt -> report the outcome

Everything the agent says is signed with the provider's key, on this machine.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin.errors import ConflictError, DepinError
from depin.limits import AGENT_HEARTBEAT_INTERVAL_S, NODE_TTL_S
from depin.receipts import sign_acceptance, sign_usage
from depin.runtime.agentwire import Acceptance, LogChunk, NodeReport, Report, Work
from depin.runtime.process import run_command
from depin.runtime.sandbox import Sandbox
from providers.agent.hardware import Machine
from providers.agent.link import Coordinator, retry

log = logging.getLogger("depin.agent")
LONG_POLL_S = 20.0  # how long one request for work is held open
LOG_FLUSH_S = 0.2  # output is sent this often while a job prints
DEFAULT_MEMORY_GIB = 4.0  # a job's memory when its manifest names none
REPORT_ATTEMPTS = 12  # a report is retried this often (doubling from 0.5 s, at most 30 s)
IDLE_POLL_S = 0.2  # between requests for work when all on offer is already taken


@dataclass(frozen=True, slots=True)
class AgentOptions:
    node_id: int
    interval_s: float = AGENT_HEARTBEAT_INTERVAL_S
    sandboxed: bool = True  # False only with --insecure-no-sandbox
    hidden: tuple[str, ...] = ()  # the agent's home and configuration: never a job's to see
    default_memory_gib: float = DEFAULT_MEMORY_GIB
    long_poll_s: float = LONG_POLL_S


@dataclass(slots=True)
class _Run:
    work: Work
    gpus: list[int]
    stop: threading.Event = field(default_factory=threading.Event)
    why: str | None = None  # why the agent stopped it, if it did
    given_up: bool = False  # stopped for the node's sake (the agent stops, or is cut off)
    accepted: bool = False  # the coordinator took its acceptance: from now on it runs here


class PullAgent:
    """Serves one node: heartbeats, takes its work, runs it, reports it."""

    def __init__(
        self,
        coordinator: Coordinator,
        private: Ed25519PrivateKey,
        machine: Machine,
        options: AgentOptions,
    ) -> None:
        self.coordinator = coordinator
        self.private = private
        self.machine = machine
        self.options = options
        self.node_id = options.node_id
        self._runs: dict[int, _Run] = {}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._free_gpus = list(range(machine.gpus))
        self._silence_limit_s = NODE_TTL_S
        self._last_contact = time.monotonic()
        self.fatal: DepinError | None = None  # a refusal that ends the agent

    # -- the loops -------------------------------------------------------------------------
    def run(self, stopping: threading.Event) -> None:
        """Serve until ``stopping`` is set (or the coordinator refuses the node for good);
        then stop what runs, and wait for its reports."""
        self.heartbeat()  # a refusal (the machine has too few GPUs) ends it here, at once
        for loop in (self._beat, self._poll):  # daemons: a held long-poll never delays a stop
            threading.Thread(target=loop, args=(stopping,), daemon=True).start()
        stopping.wait()
        if self.fatal is None:
            self._leave()
        self._stop(list(self._runs), "the node's agent stopped", give_up=True)
        for thread in self._threads:
            thread.join(timeout=30)
        if self.fatal is not None:
            raise self.fatal

    def _poll(self, stopping: threading.Event) -> None:
        """The long-poll for work: each reserved allocation starts a run."""
        failures = 0
        while not stopping.is_set():
            try:
                reply = self.coordinator.agent_work(self.node_id, wait_s=self.options.long_poll_s)
            except DepinError as exc:
                failures += 1
                log.warning("node %s: asking for work failed: %s", self.node_id, exc)
                stopping.wait(min(30.0, 0.5 * 2 ** min(failures, 6)))
                continue
            failures = 0
            if stopping.is_set():
                return
            self._stop(reply.stop, "stopped: its owner cancelled the job")
            started = [self._start(w) for w in reply.work]
            if not any(started):
                # Nothing new: what it names runs here already, is being stopped, or waits
                # for GPUs; asking again at once would spin until that changes.
                stopping.wait(IDLE_POLL_S)

    def _leave(self) -> None:
        """Tell the coordinator the node goes now, so nothing more is placed on it."""
        try:
            self.heartbeat(leaving=True)
        except DepinError as exc:  # it will notice the silence instead
            log.warning("node %s: could not say it leaves: %s", self.node_id, exc)

    def heartbeat(self, *, leaving: bool = False) -> None:
        with self._lock:  # not yet accepted: the market may not know it runs here yet
            running = [a for a, run in self._runs.items() if run.accepted]
        report = NodeReport(
            mode="pull",
            gpus=self.machine.gpus,
            gpu_model=self.machine.gpu_model,
            simulated=self.machine.simulated,
            interval_s=self.options.interval_s,
            running=running,
            leaving=leaving,
        )
        sent = time.monotonic()
        reply = self.coordinator.node_heartbeat(self.node_id, report)
        # Counted from when the beat was sent, and to the TTL alone: the agent stops its jobs
        # before the market (TTL + grace from the beat's arrival) gives them to another node.
        self._last_contact = sent
        self._silence_limit_s = reply.ttl_s
        self._stop(reply.stop, "stopped: the market no longer runs it here")

    def _beat(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.options.interval_s):
            try:
                self.heartbeat()
            except ConflictError as exc:  # the node no longer matches the machine
                log.error("node %s: %s", self.node_id, exc)
                self.fatal = exc
                stopping.set()
                return
            except DepinError as exc:
                silent_s = time.monotonic() - self._last_contact
                log.warning(
                    "node %s: heartbeat failed (%.0f s without): %s", self.node_id, silent_s, exc
                )
                if silent_s > self._silence_limit_s and self._runs:
                    # The coordinator has declared our work lost and moved it: stop it here.
                    why = f"cut off from the market for {silent_s:.0f} s"
                    self._stop(list(self._runs), why, give_up=True)

    # -- one allocation ----------------------------------------------------------------------
    def _start(self, work: Work) -> bool:
        with self._lock:
            if work.allocation_id in self._runs or len(self._free_gpus) < work.gpus:
                return False
            gpus = [self._free_gpus.pop(0) for _ in range(work.gpus)]
            run = self._runs[work.allocation_id] = _Run(work, gpus)
        thread = threading.Thread(target=self._serve, args=(run,), daemon=True)
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return True

    def _stop(self, allocation_ids: list[int], why: str, *, give_up: bool = False) -> None:
        """Stop these runs; ``give_up``: for the node's sake, not the job's (it is reported
        lost, and queued again elsewhere)."""
        with self._lock:
            for allocation_id in allocation_ids:
                run = self._runs.get(allocation_id)
                if run is not None and not run.stop.is_set():
                    run.why, run.given_up = why, give_up
                    run.stop.set()

    def _serve(self, run: _Run) -> None:
        work = run.work
        try:
            if self._accept(work):
                run.accepted = True
                self._execute(run)
        except Exception:  # one allocation's failure must not stop the agent
            log.exception("allocation %s failed on node %s", work.allocation_id, self.node_id)
        finally:
            with self._lock:
                self._runs.pop(work.allocation_id, None)
                self._free_gpus.extend(run.gpus)

    def _accept(self, work: Work) -> bool:
        facts = work.facts
        body = Acceptance(
            fence=work.fence,
            acceptance_json=sign_acceptance(self.private, facts, at=_now()).to_json(),
        )
        try:
            retry(
                lambda: self.coordinator.accept_allocation(self.node_id, work.allocation_id, body),
                attempts=3,
                backoff_s=0.2,
            )
        except DepinError as exc:  # taken back (cancelled, lost) or refused: not ours to run
            log.info("allocation %s not taken: %s", work.allocation_id, exc)
            return False
        log.info("allocation %s (job %s): running", work.allocation_id, work.job_id)
        return True

    def _execute(self, run: _Run) -> None:
        work = run.work
        ids = {
            "DEPIN_JOB_ID": str(work.job_id),
            "DEPIN_ALLOCATION_ID": str(work.allocation_id),
            "DEPIN_NODE_ID": str(self.node_id),
            "DEPIN_GPUS": str(work.gpus),
            "CUDA_VISIBLE_DEVICES": ",".join(map(str, run.gpus)),
        }
        pump = _LogPump(self.coordinator, self.node_id, work, run.stop)
        result = run_command(
            work.command,
            ids,
            work.time_limit_s,
            run.stop.is_set,
            sandbox=self._sandbox(work),
            on_output=pump.add,
        )
        pump.close()
        error = result["error"]
        if run.why is not None and error is not None:
            error = run.why
        usage = sign_usage(
            self.private,
            work.facts,
            started_at=result["started_at"],
            ended_at=result["ended_at"],
            exit_code=result["exit_code"],
        )
        report = Report(
            fence=work.fence,
            exit_code=result["exit_code"],
            output_tail=result["output_tail"],
            error=error[:2000] if error else None,
            node_fault=bool(error and error.startswith("cannot start")),
            lost=run.given_up,
            usage_json=usage.to_json(),
        )
        try:
            retry(
                lambda: self.coordinator.report_allocation(
                    self.node_id, work.allocation_id, report
                ),
                attempts=REPORT_ATTEMPTS,
                backoff_s=0.5,
            )
        except DepinError as exc:
            log.error("allocation %s: the report was not taken: %s", work.allocation_id, exc)
            return
        log.info("allocation %s: ended, exit code %s", work.allocation_id, result["exit_code"])

    def _sandbox(self, work: Work) -> Sandbox | None:
        if not self.options.sandboxed:
            return None
        memory_gib = work.memory_gib or self.options.default_memory_gib
        return Sandbox(
            network=work.network,
            memory_bytes=int(memory_gib * 2**30),
            hidden=self.options.hidden,
        )


class _LogPump:
    """Sends a run's output as it comes, every ``LOG_FLUSH_S``; a reply that says stop
    stops the run."""

    def __init__(
        self, coordinator: Coordinator, node_id: int, work: Work, stop: threading.Event
    ) -> None:
        self.coordinator, self.node_id, self.work, self.stop = coordinator, node_id, work, stop
        self._buffer = bytearray()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self._buffer += chunk

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)
        self._flush()

    def _pump(self) -> None:
        while not self._closed.wait(LOG_FLUSH_S):
            self._flush()

    def _flush(self) -> None:
        with self._lock:
            data, self._buffer = bytes(self._buffer), bytearray()
        # Pieces within the coordinator's chunk bound, split on character boundaries.
        text = data.decode("utf-8", errors="replace")
        for start in range(0, len(text), 16_384):
            body = LogChunk(fence=self.work.fence, data=text[start : start + 16_384])
            try:
                control = self.coordinator.allocation_log(
                    self.node_id, self.work.allocation_id, body
                )
            except DepinError as exc:  # output is best effort; the outcome is not
                log.debug("allocation %s: output not sent: %s", self.work.allocation_id, exc)
                return
            if control.stop:
                self.stop.set()


def _now() -> datetime:
    return datetime.now(UTC)
