"""The whole path on real Ray, a real SQLite file and real signatures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import cli
from depin.client import Client
from tests.factories import World, build_world, job

pytestmark = pytest.mark.ray


def test_a_job_runs_on_its_node_through_ray_and_settles(
    ray_session: None, sqlite_world: World
) -> None:
    world = sqlite_world
    spec = job(
        command=["python", "-c", "import os; print('ran on node', os.environ['DEPIN_NODE_ID'])"],
        resources={"gpus": 2, "gpu_models": ["L4"]},
        max_duration_s=600,
    )
    view = world.client.wait(world.submit(spec), timeout_s=120)
    node_id = world.node_ids["tokyo-l4"]
    assert view.state == "succeeded"
    alloc = view.allocation
    assert alloc is not None and alloc.node_id == node_id and alloc.exit_code == 0
    assert alloc.output_tail == f"ran on node {node_id}\n"
    assert alloc.cost_micro_usd is not None and alloc.cost_micro_usd > 0
    assert world.client.account("acme").balance.credits_posted == alloc.cost_micro_usd
    assert world.client.account("dev").balance.debits_pending == 0
    assert {n.id: n.gpus_free for n in world.client.nodes()}[node_id] == 4
    assert world.client.verify_ledger().ok


def test_a_failing_job_ends_failed_and_still_pays_for_its_time(
    ray_session: None, sqlite_world: World
) -> None:
    world = sqlite_world
    spec = job(
        command=["python", "-c", "raise SystemExit(4)"], resources={"gpus": 1, "gpu_models": ["L4"]}
    )
    view = world.client.wait(world.submit(spec), timeout_s=120)
    assert view.state == "failed"
    assert view.allocation is not None and view.allocation.exit_code == 4
    assert world.client.verify_ledger().ok


def test_depin_job_submit_wait_runs_the_job(ray_session: None, home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    for args in (
        ["keys", "new", "acme"],
        ["provider", "register", "acme", "--key", "acme"],
        [
            "node",
            "add",
            "--provider",
            "acme",
            "--gpu",
            "L4",
            "--gpus",
            "1",
            "--price-usd-per-gpu-hour",
            "0.5",
            "--lat",
            "48.85",
            "--lon",
            "2.35",
            "--tier",
            "edge",
            "--region",
            "eu-west",
            "--network",
            "fiber",
        ],
        ["keys", "new", "ada"],
        ["account", "create", "ada", "--key", "ada"],
        ["account", "deposit", "ada", "5"],
    ):
        assert runner.invoke(cli, args, catch_exceptions=False).exit_code == 0
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        textwrap.dedent(
            """
            name: hello-paris
            command: ["python", "-c", "print('bonjour from the edge')"]
            resources: {gpus: 1}
            placement: {near: [{lat: 48.85, lon: 2.35}], max_latency_ms: 20, regions: [eu]}
            """
        )
    )
    result = runner.invoke(
        cli, ["job", "submit", str(manifest), "--wait", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert '"state": "succeeded"' in result.stdout
    assert "bonjour from the edge" in result.stdout


def test_wait_on_a_failing_job_exits_1_with_the_reason(
    ray_session: None, home: Path, tmp_path: Path
) -> None:
    client = Client()
    world = build_world(client)
    manifest = tmp_path / "job.yaml"
    manifest.write_text(
        "name: doomed\ncommand: [python, -c, 'raise SystemExit(9)']\nresources: {gpus: 1}\n"
    )
    result = CliRunner().invoke(
        cli, ["job", "submit", str(manifest), "--as", world.developer, "--wait"]
    )
    client.close()
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == "error: job 1 failed: exit code 9"


def test_the_demo_runs_every_job_and_verifies_the_ledger(
    ray_session: None, home: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    from rich.console import Console

    from depin.demo import run_demo

    monkeypatch.delenv("DEPIN_HOME")
    console = Console(record=True, width=400)
    run_demo(console)
    text = console.export_text()
    assert text.count("succeeded: ") == 3
    assert "refused: no node can ever run job 'sydney-ar-overlay'" in text
    assert "ledger verify: ok" in text


def test_scheduler_run_once_places_runs_and_settles_pending_jobs(
    ray_session: None, home: Path
) -> None:
    client = Client()
    world = build_world(client)
    ids = [
        world.submit(job(f"batch-{i}", resources={"gpus": 1, "gpu_models": ["L4"]}))
        for i in range(3)
    ]
    client.close()
    result = CliRunner().invoke(
        cli, ["scheduler", "run", "--once", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["placed"] == 3 and summary["succeeded"] == 3
    with Client() as after:
        assert [after.job(i).state for i in ids] == ["succeeded"] * 3
        assert after.verify_ledger().ok


def test_a_driver_joins_an_existing_ray_cluster_by_address(
    ray_session: None, home: Path, tmp_path: Path
) -> None:
    import ray

    client = Client()
    world = build_world(client)
    client.close()
    manifest = tmp_path / "job.yaml"
    manifest.write_text("name: remote\ncommand: [python, -c, 'print(42)']\nresources: {gpus: 1}\n")
    env = os.environ | {"DEPIN_RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "job",
            "submit",
            str(manifest),
            "--as",
            world.developer,
            "--wait",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["allocations"][0]["output_tail"] == "42\n"
