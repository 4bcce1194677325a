"""``depin bench lifecycle`` on a live server and real agents, small: what it reports.

Timings are not asserted (this machine is shared); that every job it counted ran and
succeeded, that the failover happened, and the shape of the report are.
"""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from cli import cli

QUANTILES = {"n", "p50", "p99", "max"}
LATENCY = {
    "jobs",
    "succeeded",
    "not_succeeded",
    "market_ms",
    "client_ms",
    "reserve_ms",
    "dispatch_ms",
    "submit_request_ms",
    "first_seen_after_it_ended",
}
TARGET = {"figure", "target", "ratio", "met"}


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="agents run jobs under bubblewrap")
def test_bench_lifecycle_runs_every_job_and_fails_over() -> None:
    args = ["bench", "lifecycle", "--agents", "2", "--jobs", "10", "--long-jobs", "6"]
    args += ["--throughput-jobs", "10", "--submitters", "4", "--ttl-s", "2", "--grace-s", "1"]
    result = CliRunner().invoke(cli, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)

    settings = data["settings"]
    assert (settings["agents"], settings["node_ttl_s"], settings["node_grace_s"]) == (2, 2, 1)
    assert set(data["clocks"]) == {"market", "client"}

    idle = data["idle_capacity"]
    assert set(idle) == LATENCY
    assert idle["jobs"] == idle["succeeded"] == 10 and idle["not_succeeded"] == 0
    for clock in ("market_ms", "client_ms", "reserve_ms", "dispatch_ms"):
        assert set(idle[clock]) == QUANTILES and idle[clock]["n"] == 10
    loaded = data["under_load"]
    assert loaded["long_all_queueing_included"]["succeeded"] == 6
    assert loaded["short_anywhere"]["succeeded"] == 2
    split = [loaded[k]["jobs"] for k in ("long_gpu_free", "long_waited_queueing_included")]
    assert sum(split) == 6

    rate = data["throughput"]
    assert rate["jobs"] == rate["succeeded"] == 10 and rate["jobs_per_s"] > 0

    failover = data["failover"]
    assert failover["completed"] is True
    assert failover["new_node"] != failover["killed_node"]
    assert failover["lost_allocation_state"] == "lost"
    assert failover["budget_s"] == 2 + 1 + 2

    jobs = data["jobs"]  # warm-up, idle capacity and under load: every one ran and succeeded
    assert jobs["submitted"] == 4 + 10 + 6 + 2
    assert jobs["succeeded"] == jobs["submitted"] and jobs["not_succeeded"] == 0
    assert jobs["missing"] == 0
    assert data["ledger_ok"] is True

    targets = data["targets"]
    assert {"idle_capacity_market_p50_ms", "idle_capacity_client_p99_ms"} <= set(targets)
    assert {"failover_market_s", "failover_client_s"} <= set(targets)
    assert all(set(t) == TARGET for t in targets.values())
    assert targets["failover_market_s"]["target"] == 5
