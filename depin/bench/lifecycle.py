"""``depin bench lifecycle``: a job's whole life on a live market, through real node agents.

One ``depin serve`` (scheduler on, a fresh SQLite file in a DEPIN_HOME of its own) and
``agents`` node agents (``depin agent run``, pull mode, two simulated GPUs each, every
job under bubblewrap), each in a process group of its own on loopback; the bench is
their client, through the SDK. Every job it counts must have run and succeeded; any
that did not is counted and reported, never dropped.

    idle capacity   ``jobs`` short jobs, submitted one at a time (the next once the last
                    runs), on agents with GPUs free: how long from submission to running
    under load      1-second jobs confined to half the agents' region arrive faster than
                    those GPUs finish them, so a queue forms; short jobs free to run
                    anywhere arrive between them. Jobs that found a GPU free and jobs
                    that waited for one are reported apart (the latter's figure is
                    mostly queueing)
    throughput      ``throughput_jobs`` jobs submitted at once from ``submitters``
                    threads: jobs per second from the first submission until all succeeded
    failover        a 30-second job runs on node X; X's agent is killed (SIGKILL to its
                    process group); how long until the job runs again on another node,
                    with the node TTL and grace shortened for the run (then cancelled)

A warm-up job on every GPU comes first. Under load, a long job "found a GPU free" when,
by the market's records, the jobs ahead of it in its region (submitted before it and
not yet ended) held or wanted fewer GPUs than the region has; the others waited.
``under_load_gpu_free`` (held to the same targets as idle capacity) is the short jobs
and the long ones that found a GPU free: what waited for capacity is reported apart.

Submission to running is read on two clocks. *market*: the allocation's ``started_at``
(while it runs: when the market took the agent's signed acceptance) minus the job's
``created_at``, both the coordinator's clock. *client*: from just before the submit
request (the envelope signed beforehand, as a developer would) to the first status poll
that shows the job started; it includes the submit request, and the poll interval
bounds its resolution. The market's figure splits in two: *reserve* (job created to
allocation created: the scheduler, and any queueing) and *dispatch* (allocation created
to the acceptance: the agent's long-poll waking, its signing, the claim).
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from depin.bench.processes import READY_TIMEOUT_S, Group, env_for, free_port, wait_ready
from depin.client import Client
from depin.errors import RemoteError
from depin.limits import NODE_CHECK_INTERVAL_S
from depin.manifest import Envelope
from depin.spec import JobSpec, NodeSpec
from depin.states import AllocationState, JobState
from depin.views import AllocationView, JobView

STOP_TIMEOUT_S = 30.0  # the longest a bench thread is waited for
MAX_FAILURES_SHOWN = 10
# SIGTERM to SIGKILL: every job has ended by then, and the server's graceful stop waits
# out the agents' long-polls it still holds (up to 20 s), gone agents' included.
STOP_GRACE_S = 3.0
JOB_TIMEOUT_S = 60.0  # the longest any one wait for a job here lasts
GPUS_PER_AGENT = 2
DEPOSIT_USD = 100_000
POLL_S = 0.01  # between status polls of a job not yet seen running
LIST_POLL_S = 0.1  # between listings while waiting for many jobs
SPACING_S = 0.05  # between one job seen running and the next submission (idle capacity)
SHORT_JOB_S = 0.2  # long enough that a 10 ms poll sees it running (started_at = the claim)
LONG_JOB_S = 1.0  # the jobs that keep the loaded region busy
LOAD_FACTOR = 1.5  # long jobs arrive this much faster than the region's GPUs finish them
SHORT_EVERY = 3  # under load, a short job after every this many long ones
FAILOVER_JOB_S = 30
FAILOVER_SLACK_S = 2.0  # the target: back within TTL + grace + this
TARGET_P50_MS = 50.0
TARGET_P99_MS = 250.0
BUSY_REGION, FREE_REGION = "eu-central", "eu-west"
PROVIDER = "bench-provider"
ACCOUNT, LOAD_ACCOUNT = "bench", "bench-throughput"  # throughput's listing holds only its jobs
Progress = Callable[[str], None]


# -- processes ---------------------------------------------------------------------------
def _serve(home: Path, port: int, ttl_s: float, grace_s: float) -> Group:
    env = env_for(
        home,
        DEPIN_API_RATE_PER_ADDRESS="1000000",  # the bench and every agent share one loopback
        DEPIN_NODE_TTL_S=f"{ttl_s:g}",
        DEPIN_NODE_GRACE_S=f"{grace_s:g}",
    )
    command = [sys.executable, "-m", "cli", "serve", "--port", str(port)]
    return Group(command, env, home / "serve.log")


def _agent(home: Path, url: str, node_id: int, interval_s: float) -> Group:
    command = [sys.executable, "-m", "cli", "agent", "run", "--node", str(node_id)]
    command += ["--api", url, "--simulate-gpus", str(GPUS_PER_AGENT)]
    command += ["--heartbeat-interval-s", f"{interval_s:g}"]
    return Group(command, env_for(home), home / f"agent-{node_id}.log")


def _stop(groups: dict[str, Group]) -> dict[str, bool]:
    """SIGTERM to all at once, SIGKILL to those still up ``STOP_GRACE_S`` later (every job
    has ended by then); whether each that was up exited on SIGTERM."""
    for group in groups.values():
        if not group.alive():  # killed by the failover: nothing to stop
            group.close()
    groups = {name: g for name, g in groups.items() if g.alive()}
    for group in groups.values():
        group.terminate()
    deadline = time.perf_counter() + STOP_GRACE_S
    while any(g.alive() for g in groups.values()) and time.perf_counter() < deadline:
        time.sleep(0.05)
    exited = {name: not g.alive() for name, g in groups.items()}
    for group in groups.values():
        group.close()
    return exited


def _wait_agents(client: Client, agents: dict[int, Group]) -> None:
    """Until every node is active and served by its agent in pull mode."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [n for n, g in agents.items() if not g.alive()]
        if dead:
            raise RemoteError(f"the agent of node {dead[0]} exited: {agents[dead[0]].tail()}")
        nodes = {n.id: n for n in client.nodes()}
        if all(nodes[n].agent == "pull" and nodes[n].status == "active" for n in agents):
            return
        time.sleep(0.2)
    logs = "; ".join(f"node {n}: {g.tail()}" for n, g in agents.items())
    raise RemoteError(f"the agents were not serving within {READY_TIMEOUT_S:g} s: {logs}")


# -- the market's side -----------------------------------------------------------------------
def _node(region: str) -> NodeSpec:
    return NodeSpec(
        provider=PROVIDER,
        gpu_model="RTX 4090",
        gpus=GPUS_PER_AGENT,
        price_usd_per_gpu_hour="0.45",
        lat=50.11,
        lon=8.68,
        tier="edge",
        region=region,
        network="fiber",
    )


def _setup(client: Client, regions: list[str]) -> list[int]:
    client.new_key(PROVIDER)
    client.register_provider(PROVIDER, key=PROVIDER)
    node_ids = client.add_nodes([_node(r) for r in regions])
    for account in (ACCOUNT, LOAD_ACCOUNT):
        client.new_key(account)
        client.create_account(account, key=account)
        client.deposit(account, DEPOSIT_USD)
    return node_ids


def _job(name: str, seconds: float, region: str | None = None) -> JobSpec:
    command = ["true"] if seconds == 0 else ["sleep", f"{seconds:g}"]
    return JobSpec.model_validate(
        {
            "name": name,
            "command": command,
            "resources": {"gpus": 1},
            "placement": {"regions": [region] if region else []},
            "max_duration_s": int(seconds) + 60,
            "pricing": {"max_usd_per_gpu_hour": "5"},
        }
    )


def _sign(client: Client, spec: JobSpec, count: int, account: str = ACCOUNT) -> list[Envelope]:
    """Signed before the clock starts: signing is the developer's work, not the market's."""
    key = client.signing_key_for(account)
    return [client.sign(spec, key=key, account=account) for _ in range(count)]


def _instant(text: str | None) -> datetime:
    assert text is not None, "the market left a time unset"
    return datetime.fromisoformat(text)


def _ms(later: str | None, earlier: str | None) -> float:
    return (_instant(later) - _instant(earlier)).total_seconds() * 1000


def _started(view: JobView) -> AllocationView | None:
    a = view.allocation
    return a if a is not None and a.started_at is not None else None


# -- one job, watched ------------------------------------------------------------------------
@dataclass(slots=True)
class Sample:
    """One job from the client's side, and the market's view of it when first seen started."""

    job_id: int
    kind: str
    began: float  # perf_counter just before the submit request
    submitted: float  # ... when it returned
    seen: float | None = None  # ... the first poll that showed it started
    first: JobView | None = None  # that poll's view (started_at is still the claim if running)

    @property
    def client_ms(self) -> float:
        assert self.seen is not None
        return (self.seen - self.began) * 1000

    @property
    def market_ms(self) -> float:
        assert self.first is not None
        return _ms(_started_alloc(self.first).started_at, self.first.created_at)

    @property
    def reserve_ms(self) -> float:
        """Submission to reservation: the scheduler's part, queueing included."""
        assert self.first is not None
        return _ms(_started_alloc(self.first).created_at, self.first.created_at)

    @property
    def dispatch_ms(self) -> float:
        """Reservation to the agent's acceptance: the long-poll, the agent's and the claim's."""
        assert self.first is not None
        a = _started_alloc(self.first)
        return _ms(a.started_at, a.created_at)

    @property
    def seen_settled(self) -> bool:
        """First seen after it ended: started_at is the receipt's start, not the claim."""
        assert self.first is not None
        return _started_alloc(self.first).state != AllocationState.RUNNING


def _started_alloc(view: JobView) -> AllocationView:
    a = _started(view)
    assert a is not None
    return a


def _submit(client: Client, envelope: Envelope, kind: str) -> Sample:
    began = time.perf_counter()
    view = client.submit(envelope)
    return Sample(view.id, kind, began, time.perf_counter())


def _look(client: Client, sample: Sample) -> bool:
    """One poll; True once the job is seen started (or ended without ever starting)."""
    view = client.job(sample.job_id)
    if _started(view) is not None:
        sample.seen, sample.first = time.perf_counter(), view
        return True
    return view.terminal


def _look_all(client: Client, waiting: dict[int, Sample], *, limit: int) -> list[int]:
    """One listing: the jobs of ``waiting`` now seen started (or ended without starting)."""
    views = client.jobs(account=ACCOUNT, limit=limit)
    now, seen = time.perf_counter(), []
    for view in views:
        sample = waiting.get(view.id)
        if sample is None:
            continue
        if _started(view) is not None:
            sample.seen, sample.first = now, view
        if _started(view) is not None or view.terminal:
            seen.append(view.id)
    return seen


def _watch(client: Client, sample: Sample) -> Sample:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not _look(client, sample):
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    return sample


# -- the phases ------------------------------------------------------------------------------
def _idle_capacity(client: Client, jobs: int) -> list[Sample]:
    envelopes = _sign(client, _job("bench-short", SHORT_JOB_S), jobs)
    samples = []
    for envelope in envelopes:
        samples.append(_watch(client, _submit(client, envelope, "short")))
        time.sleep(SPACING_S)
    return samples


@dataclass(slots=True)
class LoadPlan:
    long_jobs: int
    busy_gpus: int

    @property
    def interval_s(self) -> float:
        """Between long jobs: ``LOAD_FACTOR`` times faster than the busy GPUs finish them."""
        return LONG_JOB_S / (self.busy_gpus * LOAD_FACTOR)


def _under_load(url: str, home: Path, client: Client, plan: LoadPlan) -> list[Sample]:
    """A submitter thread keeps the schedule; this thread polls what is not yet seen."""
    longs = _sign(client, _job("bench-long", LONG_JOB_S, BUSY_REGION), plan.long_jobs)
    shorts = _sign(client, _job("bench-short", SHORT_JOB_S), plan.long_jobs // SHORT_EVERY)
    order = [(e, "long") for e in longs]
    for i, e in enumerate(shorts):
        order.insert((i + 1) * (SHORT_EVERY + 1) - 1, (e, "short"))
    # On the longs' schedule; a short goes with the long after it, just before it.
    due_s = [sum(k == "long" for _, k in order[:i]) * plan.interval_s for i in range(len(order))]
    samples: list[Sample] = []
    lock, done = threading.Lock(), threading.Event()
    failures: list[BaseException] = []

    def submit_all() -> None:
        try:
            with Client(url=url, home=home, account=ACCOUNT) as submitter:
                start = time.perf_counter()
                for (envelope, kind), due in zip(order, due_s, strict=True):
                    time.sleep(max(0.0, start + due - time.perf_counter()))
                    sample = _submit(submitter, envelope, kind)
                    with lock:
                        samples.append(sample)
        except BaseException as exc:
            failures.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=submit_all, daemon=True)
    thread.start()
    finished: set[int] = set()  # seen started, or ended without ever starting
    deadline = time.monotonic() + JOB_TIMEOUT_S + len(order) * plan.interval_s
    while time.monotonic() < deadline:
        with lock:
            waiting = {s.job_id: s for s in samples if s.job_id not in finished}
            submitted = len(samples)
        if done.is_set() and not waiting:
            break
        if waiting:  # one listing a round (newest first: this phase's jobs), not one per job
            finished.update(_look_all(client, waiting, limit=submitted + 1))
        time.sleep(POLL_S)
    thread.join(timeout=STOP_TIMEOUT_S)
    if failures:
        raise failures[0]
    return samples


def _gpu_was_free(sample: Sample, views: dict[int, JobView], busy_nodes: frozenset[int]) -> bool:
    """By the market's records: when it was submitted, the jobs ahead of it in the busy
    region (submitted before it, not yet ended: running or waiting) held or wanted fewer
    GPUs than the region has."""
    assert sample.first is not None
    at = _instant(sample.first.created_at)
    ahead = 0
    for view in views.values():
        if view.id == sample.job_id or _instant(view.created_at) >= at:
            continue
        for a in view.allocations:
            if a.node_id in busy_nodes and (a.ended_at is None or _instant(a.ended_at) > at):
                ahead += a.gpus
                break
    return ahead < len(busy_nodes) * GPUS_PER_AGENT


def _throughput(url: str, home: Path, client: Client, jobs: int, submitters: int) -> dict[str, Any]:
    envelopes = _sign(client, _job("bench-rate", 0), jobs, account=LOAD_ACCOUNT)
    shares = [share for share in (envelopes[i::submitters] for i in range(submitters)) if share]
    failures: list[BaseException] = []
    ready = threading.Barrier(len(shares) + 1)  # every submitter connected: start together

    def submit_share(share: list[Envelope]) -> None:
        try:
            with Client(url=url, home=home, account=LOAD_ACCOUNT) as submitter:
                assert submitter.market_id  # connected before the clock starts
                ready.wait()
                for envelope in share:
                    submitter.submit(envelope)
        except BaseException as exc:
            failures.append(exc)
            ready.abort()

    threads = [threading.Thread(target=submit_share, args=(s,), daemon=True) for s in shares]
    for t in threads:
        t.start()
    with suppress(threading.BrokenBarrierError):  # a submitter failed: raised below
        ready.wait()
    began = time.perf_counter()
    for t in threads:
        t.join(timeout=JOB_TIMEOUT_S)
    submitted_s = time.perf_counter() - began
    if failures:
        raise failures[0]
    deadline = time.monotonic() + JOB_TIMEOUT_S + jobs
    views = client.jobs(account=LOAD_ACCOUNT, limit=jobs)
    while not (len(views) == jobs and all(v.terminal for v in views)):
        if time.monotonic() > deadline:
            break
        time.sleep(LIST_POLL_S)
        views = client.jobs(account=LOAD_ACCOUNT, limit=jobs)
    elapsed_s = time.perf_counter() - began
    states = Counter(str(v.state) for v in views)
    succeeded = states.get(JobState.SUCCEEDED, 0)
    ended = [_instant(v.ended_at) for v in views if v.ended_at]
    first = min((_instant(v.created_at) for v in views), default=None)
    span_s = (max(ended) - first).total_seconds() if ended and first else 0.0
    return {
        "jobs": jobs,
        "submitters": len(shares),
        "succeeded": succeeded,
        "states": dict(states),
        "submitted_in_s": round(submitted_s, 3),
        "submissions_per_s": round(jobs / submitted_s, 1),
        "all_settled_in_s": round(elapsed_s, 3),
        "jobs_per_s": round(succeeded / elapsed_s, 1),
        "market_span_s": round(span_s, 3),
        "jobs_per_s_market_clock": round(succeeded / span_s, 1) if span_s > 0 else None,
        "failures": [_failure(v) for v in views if v.state != JobState.SUCCEEDED][
            :MAX_FAILURES_SHOWN
        ],
    }


def _failover(
    client: Client, agents: dict[int, Group], ttl_s: float, grace_s: float
) -> dict[str, Any]:
    """Kill the agent running a long job; until the job runs on another node. The TTL
    counts from the node's last heartbeat, which is reported with the figure."""
    (envelope,) = _sign(client, _job("bench-failover", FAILOVER_JOB_S), 1)
    sample = _watch(client, _submit(client, envelope, "failover"))
    budget_s = ttl_s + grace_s + FAILOVER_SLACK_S
    if sample.first is None:
        return {"completed": False, "budget_s": budget_s, "error": "the job never ran"}
    first = _started_alloc(sample.first)
    victim = first.node_id
    heard = _instant({n.id: n.last_heartbeat_at for n in client.nodes()}[victim])
    killed_at, killed = datetime.now(UTC), time.perf_counter()
    agents[victim].kill()
    view, again = _wait_elsewhere(client, sample.job_id, victim, ttl_s + grace_s + JOB_TIMEOUT_S)
    seen = time.perf_counter()
    # 30 s of sleep prove nothing more: stop it.
    ended = view if view.terminal else client.cancel(sample.job_id)
    if not ended.terminal:
        ended = _wait_terminal(client, sample.job_id)
    silent_s = (killed_at - heard).total_seconds()
    result: dict[str, Any] = {
        "killed_node": victim,
        "silent_before_kill_s": round(silent_s, 3),
        "budget_s": budget_s,
        "final_state": f"{ended.state} (cancelled by the bench once it ran again)",
    }
    if again is None:
        return result | {"completed": False, "error": f"not running elsewhere: {view.state}"}
    lost = next(a for a in view.allocations if a.id == first.id)
    at = killed_at.isoformat()
    return result | {
        "completed": True,
        "new_node": again.node_id,
        "market_s": round(_ms(again.started_at, at) / 1000, 3),
        "client_s": round(seen - killed, 3),
        "declared_lost_after_s": round(_ms(lost.ended_at, at) / 1000, 3),
        "silent_when_declared_lost_s": round(_ms(lost.ended_at, at) / 1000 + silent_s, 3),
        "lost_allocation_state": str(lost.state),
        "reserved_again_after_s": round(_ms(again.created_at, at) / 1000, 3),
    }


def _wait_elsewhere(
    client: Client, job_id: int, victim: int, timeout_s: float
) -> tuple[JobView, AllocationView | None]:
    """Until the job runs on a node other than ``victim`` (that allocation), or ends."""
    deadline = time.monotonic() + timeout_s
    while True:
        view = client.job(job_id)
        again = _started(view)
        if again is not None and again.node_id != victim:
            return view, again
        if view.terminal or time.monotonic() > deadline:
            return view, None
        time.sleep(POLL_S)


def _wait_terminal(client: Client, job_id: int) -> JobView:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    view = client.job(job_id)
    while not view.terminal and time.monotonic() < deadline:
        time.sleep(LIST_POLL_S)
        view = client.job(job_id)
    return view


def _wait_all(client: Client, job_ids: set[int]) -> dict[int, JobView]:
    """Until every job ended (or the time is up): their final views."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        views = {v.id: v for v in client.jobs(account=ACCOUNT, limit=1000) if v.id in job_ids}
        if (len(views) == len(job_ids) and all(v.terminal for v in views.values())) or (
            time.monotonic() > deadline
        ):
            return views
        time.sleep(LIST_POLL_S)


# -- figures ---------------------------------------------------------------------------------
def _quantiles(values: Sequence[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None}
    q = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else []
    p50, p99 = (q[49], q[98]) if q else (values[0], values[0])
    return {
        "n": len(values),
        "p50": round(p50, 1),
        "p99": round(p99, 1),
        "max": round(max(values), 1),
    }


def _latency(samples: Sequence[Sample], views: dict[int, JobView]) -> dict[str, Any]:
    """The figures of jobs that ran and succeeded; the others are counted apart."""
    good = [
        s
        for s in samples
        if s.first is not None and views.get(s.job_id, s.first).state == JobState.SUCCEEDED
    ]
    return {
        "jobs": len(samples),
        "succeeded": len(good),
        "not_succeeded": len(samples) - len(good),
        "market_ms": _quantiles([s.market_ms for s in good]),
        "client_ms": _quantiles([s.client_ms for s in good]),
        "reserve_ms": _quantiles([s.reserve_ms for s in good]),
        "dispatch_ms": _quantiles([s.dispatch_ms for s in good]),
        "submit_request_ms": _quantiles([(s.submitted - s.began) * 1000 for s in good]),
        "first_seen_after_it_ended": sum(s.seen_settled for s in good),
    }


def _region_rate(samples: Sequence[Sample], views: dict[int, JobView], gpus: int) -> Any:
    """Long jobs the busy region finished per second, from the first one's start to the
    last one's end (market clock), against its GPUs' worth: the gaps between jobs show."""
    done = [
        (s, views[s.job_id])
        for s in samples
        if s.first is not None and s.job_id in views and views[s.job_id].state == JobState.SUCCEEDED
    ]
    if not done:
        return {"jobs_per_s": None, "ideal_jobs_per_s": gpus / LONG_JOB_S}
    start = min(_instant(_started_alloc(s.first).started_at) for s, _ in done if s.first)
    end = max(_instant(_started_alloc(v).ended_at) for _, v in done)
    span_s = (end - start).total_seconds()
    return {
        "jobs_per_s": round(len(done) / span_s, 2) if span_s > 0 else None,
        "ideal_jobs_per_s": gpus / LONG_JOB_S,
    }


def _target(figure: float | None, target: float) -> dict[str, Any]:
    return {
        "figure": figure,
        "target": target,
        "ratio": None if figure is None else round(figure / target, 2),
        "met": figure is not None and figure <= target,
    }


def _targets(idle: dict[str, Any], loaded: dict[str, Any], failover: dict[str, Any]) -> Any:
    targets = {}
    for name, figures in (("idle_capacity", idle), ("under_load_gpu_free", loaded)):
        for clock in ("market", "client"):
            q = figures[f"{clock}_ms"]
            targets[f"{name}_{clock}_p50_ms"] = _target(q["p50"], TARGET_P50_MS)
            targets[f"{name}_{clock}_p99_ms"] = _target(q["p99"], TARGET_P99_MS)
    if failover.get("completed"):
        for clock in ("market", "client"):
            targets[f"failover_{clock}_s"] = _target(failover[f"{clock}_s"], failover["budget_s"])
    return targets


def _failure(view: JobView) -> dict[str, Any]:
    a = view.allocation
    return {
        "job_id": view.id,
        "name": view.name,
        "state": str(view.state),
        "reasons": view.reasons[:3],
        "node_id": a.node_id if a else None,
        "exit_code": a.exit_code if a else None,
        "error": a.error if a else None,
        "output_tail": (a.output_tail or "")[-300:] if a else None,
    }


def _job_accounting(views: dict[int, JobView], expected: int) -> dict[str, Any]:
    states = Counter(str(v.state) for v in views.values())
    failed = [v for v in views.values() if v.state != JobState.SUCCEEDED]
    return {
        "failures": [_failure(v) for v in failed[:MAX_FAILURES_SHOWN]],
        "submitted": expected,
        "succeeded": states.get(JobState.SUCCEEDED, 0),
        "not_succeeded": expected - states.get(JobState.SUCCEEDED, 0),
        "states": dict(states),
        "missing": expected - len(views),
        "ran_more_than_once": sum(len(v.allocations) > 1 for v in views.values()),
    }


# -- the run ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Options:
    agents: int = 4
    jobs: int = 200
    long_jobs: int = 36
    throughput_jobs: int = 100
    submitters: int = 8
    failover: bool = True
    ttl_s: float = 3.0
    grace_s: float = 2.0
    heartbeat_interval_s: float = 1.0

    @property
    def busy_agents(self) -> int:
        """The agents whose region the long jobs are confined to: half of them."""
        return max(1, self.agents // 2)

    @property
    def warmup_jobs(self) -> int:
        return self.agents * GPUS_PER_AGENT


@dataclass(frozen=True, slots=True)
class Market:
    url: str
    home: Path
    agents: dict[int, Group]  # node id -> its agent
    busy_nodes: frozenset[int]  # the nodes in the region the long jobs are confined to
    shutdown: dict[str, Any]  # how the agents stopped, filled in on the way out


@contextmanager
def _market(root: Path, o: Options, say: Progress) -> Iterator[Market]:
    """A served market with its nodes, accounts and agents; on the way out the agents stop,
    then the server (while an agent lives, the server holds its long-poll open)."""
    home = root / "home"
    home.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _serve(home, port, o.ttl_s, o.grace_s)
    agents: dict[int, Group] = {}
    shutdown: dict[str, Any] = {}
    try:
        wait_ready(server, url)
        regions = [BUSY_REGION if i < o.busy_agents else FREE_REGION for i in range(o.agents)]
        with Client(url=url, home=home) as client:
            node_ids = _setup(client, regions)
            say(f"depin serve at {url}; starting {o.agents} agents")
            for node_id in node_ids:
                agents[node_id] = _agent(home, url, node_id, o.heartbeat_interval_s)
            _wait_agents(client, agents)
        busy = frozenset(n for n, r in zip(node_ids, regions, strict=True) if r == BUSY_REGION)
        yield Market(url, home, agents, busy, shutdown)
    finally:
        exited = _stop({f"node {n}": g for n, g in agents.items()})
        exited |= _stop({"server": server})
        shutdown["exited_on_sigterm_within_s"] = STOP_GRACE_S
        shutdown["exited"] = sorted(name for name, ok in exited.items() if ok)
        shutdown["killed"] = sorted(name for name, ok in exited.items() if not ok)


def run(
    *,
    agents: int = 4,
    jobs: int = 200,
    long_jobs: int = 36,
    throughput_jobs: int = 100,
    submitters: int = 8,
    failover: bool = True,
    ttl_s: float = 3.0,
    grace_s: float = 2.0,
    heartbeat_interval_s: float = 1.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Every figure, the settings they were measured under, and how far each is from its
    target."""
    o = Options(
        agents=agents,
        jobs=jobs,
        long_jobs=long_jobs,
        throughput_jobs=throughput_jobs,
        submitters=submitters,
        failover=failover,
        ttl_s=ttl_s,
        grace_s=grace_s,
        heartbeat_interval_s=heartbeat_interval_s,
    )
    say = progress or (lambda _msg: None)
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="depin-bench-lifecycle-"))
    try:
        with (
            _market(root, o, say) as market,
            Client(url=market.url, home=market.home, account=ACCOUNT) as client,
        ):
            data = _measure(market, client, o, say)
        data["shutdown"] = market.shutdown
    finally:
        shutil.rmtree(root, ignore_errors=True)
    data["elapsed_s"] = round(time.perf_counter() - began, 1)
    return data


def _warm_up(client: Client, jobs: int) -> list[Sample]:
    """A job on every GPU at once, so every agent has run one before the clock starts."""
    submitted = [_submit(client, e, "warmup") for e in _sign(client, _job("bench-warm", 0), jobs)]
    return [_watch(client, s) for s in submitted]


def _settings(o: Options) -> dict[str, Any]:
    return {
        "agents": o.agents,
        "gpus_per_agent": GPUS_PER_AGENT,
        "busy_region_agents": o.busy_agents,
        "warmup_jobs": o.warmup_jobs,
        "jobs": o.jobs,
        "short_job_s": SHORT_JOB_S,
        "spacing_ms": SPACING_S * 1000,
        "poll_interval_ms": POLL_S * 1000,
        "long_jobs": o.long_jobs,
        "load_factor": LOAD_FACTOR,
        "throughput_jobs": o.throughput_jobs,
        "submitters": o.submitters,
        "failover_job_s": FAILOVER_JOB_S,
        "node_ttl_s": o.ttl_s,
        "node_grace_s": o.grace_s,
        "heartbeat_interval_s": o.heartbeat_interval_s,
        "node_check_interval_s": NODE_CHECK_INTERVAL_S,
        "database": "sqlite (fresh file)",
        "sandbox": "bubblewrap",
    }


def _under_load_figures(
    loaded: list[Sample], free: set[int], views: dict[int, JobView], plan: LoadPlan
) -> dict[str, Any]:
    """``free``: the long jobs that found a GPU free when they came (``_gpu_was_free``)."""
    longs = [s for s in loaded if s.kind == "long"]
    return {
        "long_jobs": plan.long_jobs,
        "long_job_s": LONG_JOB_S,
        "arrival_interval_s": round(plan.interval_s, 3),
        "busy_region_gpus": plan.busy_gpus,
        "short_anywhere": _latency([s for s in loaded if s.kind == "short"], views),
        "long_gpu_free": _latency([s for s in longs if s.job_id in free], views),
        "long_waited_queueing_included": _latency(
            [s for s in longs if s.job_id not in free], views
        ),
        "long_all_queueing_included": _latency(longs, views),
        "busy_region_throughput": _region_rate(longs, views, plan.busy_gpus),
    }


def _measure(market: Market, client: Client, o: Options, say: Progress) -> dict[str, Any]:
    url, home = market.url, market.home
    say(f"warm-up: {o.warmup_jobs} jobs")
    warm = _warm_up(client, o.warmup_jobs)
    say(f"idle capacity: {o.jobs} jobs of {SHORT_JOB_S:g} s, one at a time")
    idle = _idle_capacity(client, o.jobs)
    plan = LoadPlan(o.long_jobs, o.busy_agents * GPUS_PER_AGENT)
    say(
        f"under load: {plan.long_jobs} jobs of {LONG_JOB_S:g} s every {plan.interval_s:.3f} s "
        f"on {plan.busy_gpus} GPUs, short jobs between"
    )
    loaded = _under_load(url, home, client, plan)
    counted = {s.job_id for s in warm + idle + loaded}
    views = _wait_all(client, counted)
    free = {
        s.job_id
        for s in loaded
        if s.kind == "long" and s.first is not None and _gpu_was_free(s, views, market.busy_nodes)
    }
    say(f"throughput: {o.throughput_jobs} jobs from {o.submitters} threads")
    rate = _throughput(url, home, client, o.throughput_jobs, o.submitters)
    fail: dict[str, Any] = {"skipped": "--no-failover"}
    if o.failover:
        say(f"failover: SIGKILL an agent (TTL {o.ttl_s:g} s, grace {o.grace_s:g} s)")
        fail = _failover(client, market.agents, o.ttl_s, o.grace_s)
    idle_figures = _latency(idle, views)
    loaded_free = _latency([s for s in loaded if s.kind != "long" or s.job_id in free], views)
    accounting = _job_accounting(views, len(counted))
    accounting["throughput"] = {"submitted": rate["jobs"], "succeeded": rate["succeeded"]}
    ledger_ok = client.verify_ledger().ok
    say("stopping the agents and the server")
    return {
        "settings": _settings(o),
        "clocks": {
            "market": "allocation started_at (the agent's acceptance, read while it runs) "
            "minus job created_at, both the coordinator's clock",
            "client": "perf_counter from just before the submit request to the first poll "
            "that shows the job started (includes the request; the poll interval bounds it)",
        },
        "idle_capacity": idle_figures,
        "under_load": _under_load_figures(loaded, free, views, plan),
        "under_load_gpu_free": loaded_free,
        "throughput": rate,
        "failover": fail,
        "jobs": accounting,
        "ledger_ok": ledger_ok,
        "targets": _targets(idle_figures, loaded_free, fail),
    }
