"""The allocation body: exit codes, output tails, time limits (run in-process, no Ray)."""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

import pytest
import ray.exceptions

from depin.runtime.executor import error_line
from depin.runtime.process import OUTPUT_TAIL_BYTES, STOPPED, run_command


def test_a_command_runs_with_the_allocation_environment() -> None:
    result = run_command(
        ["python", "-c", "import os; print(os.environ['DEPIN_NODE_ID'])"],
        {"DEPIN_NODE_ID": "7"},
        30,
    )
    assert result["exit_code"] == 0
    assert result["output_tail"] == "7\n"
    assert result["error"] is None
    assert result["ended_at"] >= result["started_at"]


def test_python_means_the_workers_interpreter() -> None:
    result = run_command(["python", "-c", "import sys; print(sys.executable)"], {}, 30)
    assert result["output_tail"].strip() == sys.executable


def test_a_failing_command_reports_its_exit_code_and_stderr() -> None:
    result = run_command(
        ["python", "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], {}, 30
    )
    assert result["exit_code"] == 3
    assert "boom" in result["output_tail"]


def test_only_the_tail_of_long_output_is_kept() -> None:
    result = run_command(["python", "-c", "print('x' * 100000 + 'END')"], {}, 30)
    assert len(result["output_tail"].encode()) <= OUTPUT_TAIL_BYTES
    assert result["output_tail"].rstrip().endswith("END")


def test_a_command_past_its_time_limit_is_killed_with_its_children() -> None:
    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    result = run_command(["python", "-c", script], {}, 1)
    assert result["exit_code"] == -9
    assert result["error"] == "killed at its time limit of 1 s"
    assert (result["ended_at"] - result["started_at"]).total_seconds() < 10


def test_a_missing_program_is_exit_127_with_a_message() -> None:
    result = run_command(["no-such-program-here"], {}, 5)
    assert result["exit_code"] == 127
    assert "cannot start 'no-such-program-here'" in result["error"]


def test_a_task_error_is_reported_by_its_own_exception_not_the_worker_line() -> None:
    try:
        raise ValueError("bad input: boom")
    except ValueError as cause:
        error = ray.exceptions.RayTaskError("run_job", traceback.format_exc(), cause)
    assert error_line(error) == "ValueError: bad input: boom"


def test_other_ray_errors_are_reported_by_their_first_line() -> None:
    assert error_line(ray.exceptions.WorkerCrashedError()).startswith(
        "The worker died unexpectedly"
    )


def test_a_job_sees_an_environment_built_from_nothing_in_a_fresh_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # What the driver's own environment holds must not reach the job.
    monkeypatch.setenv("DEPIN_HOME", str(tmp_path / "secret-home"))
    monkeypatch.setenv("DEPIN_DATABASE_URL", "postgresql+psycopg://root:pw@db/market")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "do-not-leak")
    monkeypatch.chdir(tmp_path)
    script = (
        "import json, os; print(json.dumps({'env': dict(os.environ), 'cwd': os.getcwd(), "
        "'files': os.listdir('.')}))"
    )
    ids = {"DEPIN_JOB_ID": "7", "DEPIN_ALLOCATION_ID": "9", "DEPIN_NODE_ID": "3", "DEPIN_GPUS": "1"}
    result = run_command(["python", "-c", script], ids, 30)
    seen = json.loads(result["output_tail"])
    assert sorted(seen["env"]) == sorted(["PATH", "LANG", "HOME", *ids])
    assert {k: seen["env"][k] for k in ids} == ids
    assert seen["env"]["HOME"] == seen["cwd"] and seen["files"] == []
    assert Path(seen["cwd"]).resolve() != tmp_path.resolve()
    assert not Path(seen["cwd"]).exists()  # removed once the job ended


def test_what_a_job_leaves_running_ends_with_it_and_its_output_is_kept() -> None:
    # The child keeps the output pipe open; without ending the group the job would
    # wait for it (or lose its output) and the child would outlive the allocation.
    script = (
        "import subprocess, sys; "
        "child = subprocess.Popen(['sleep', '60']); "
        "print(child.pid, flush=True); print('done', flush=True)"
    )
    result = run_command(["python", "-c", script], {}, 30)
    child_pid, last = result["output_tail"].split()
    assert result["exit_code"] == 0 and last == "done"
    assert (result["ended_at"] - result["started_at"]).total_seconds() < 5
    with pytest.raises(ProcessLookupError):
        _wait_gone(int(child_pid))


def _wait_gone(pid: int) -> None:
    """Signal 0 to ``pid`` until it is gone (ProcessLookupError), for up to 5 s."""
    for _ in range(50):
        os.kill(pid, 0)
        time.sleep(0.1)


def test_a_command_asked_to_stop_is_killed_with_its_children_and_says_why() -> None:
    asked: list[float] = []

    def should_stop() -> bool:
        asked.append(time.monotonic())
        return len(asked) >= 2

    script = "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"
    result = run_command(["python", "-c", script], {}, 60, should_stop)
    assert result["exit_code"] == -9
    assert result["error"] == STOPPED
    assert (result["ended_at"] - result["started_at"]).total_seconds() < 10
