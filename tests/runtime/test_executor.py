"""The allocation body: exit codes, output tails, time limits (run in-process, no Ray)."""

from __future__ import annotations

import sys
import traceback

import ray.exceptions

from depin.runtime.executor import OUTPUT_TAIL_BYTES, error_line, run_command


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
