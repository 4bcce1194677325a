"""Running a job's command on a node: a fresh working directory, an environment built from
nothing, its own process group, a time limit, a stop request, and the tail of its output.

The Ray executor's tasks and the node agent both run jobs through ``run_command``;
the agent adds the sandbox (``depin.runtime.sandbox``) and streams the output as it
comes (``on_output``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from depin.limits import STOP_POLL_S
from depin.runtime.sandbox import Sandbox

STOPPED = "stopped: its owner cancelled the job"
OUTPUT_TAIL_BYTES = 4096
_READ_CHUNK_BYTES = 65536
OnOutput = Callable[[bytes], None]


def _interpreter(command: Sequence[str]) -> list[str]:
    """``python`` in a command means the interpreter the worker runs under."""
    argv = list(command)
    if argv and argv[0] in ("python", "python3"):
        argv[0] = sys.executable
    return argv


def _tail_reader(stream: Any, tail: bytearray, on_output: OnOutput | None) -> None:
    # read1: what has arrived, without waiting for a full chunk.
    for chunk in iter(lambda: stream.read1(_READ_CHUNK_BYTES), b""):
        tail += chunk
        del tail[:-OUTPUT_TAIL_BYTES]
        if on_output is not None:
            on_output(chunk)


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
    command: Sequence[str],
    ids: Mapping[str, str],
    time_limit_s: int,
    should_stop: Callable[[], bool] | None = None,
    *,
    sandbox: Sandbox | None = None,
    on_output: OnOutput | None = None,
) -> dict[str, Any]:
    """Run ``command`` to completion, its time limit, or until ``should_stop()`` (asked
    every ``STOP_POLL_S``); keep the tail of its output, and hand each piece of it to
    ``on_output`` as it arrives.

    It runs in a fresh working directory (its HOME too, removed afterwards) with
    an environment built from nothing (``job_environment``), under ``sandbox``
    when given. This is the body of the Ray task and of the agent's runs.
    """
    started = datetime.now(UTC)
    argv = _interpreter(command)
    with tempfile.TemporaryDirectory(prefix="depin-job-") as workdir:
        env = job_environment(workdir, ids)
        if sandbox is not None:
            sandbox.prepare_workdir(workdir)
            argv = sandbox.argv(argv, workdir, env)
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=workdir,
                env=env,
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
        reader = threading.Thread(
            target=_tail_reader, args=(proc.stdout, tail, on_output), daemon=True
        )
        reader.start()
        try:
            exit_code, error = _wait(proc, time_limit_s, should_stop)
        finally:
            # The job ends with its command, and with this task (a cancel interrupts it):
            # what it left running would outlive the allocation and hold the pipe open.
            _kill_group(proc.pid)
            proc.wait()  # reaped: at once after the kill, or already
        reader.join(timeout=5)
    output = bytes(tail).decode("utf-8", errors="replace")
    return {
        "started_at": started,
        "ended_at": datetime.now(UTC),
        "exit_code": exit_code,
        "output_tail": output,
        "error": error,
    }


def _wait(
    proc: subprocess.Popen[bytes], time_limit_s: int, should_stop: Callable[[], bool] | None
) -> tuple[int, str | None]:
    """The command's exit code, and why it was killed (if it was)."""
    deadline = time.monotonic() + time_limit_s
    while True:
        left_s = deadline - time.monotonic()
        try:
            return proc.wait(timeout=max(0.0, min(left_s, STOP_POLL_S))), None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() >= deadline:
            why = f"killed at its time limit of {time_limit_s} s"
        elif should_stop is not None and should_stop():
            why = STOPPED
        else:
            continue
        _kill_group(proc.pid)
        return proc.wait(), why
