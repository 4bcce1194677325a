"""Running a Ray scenario in user, network and PID namespaces of its own (``unshare``).

Why: Ray rewrites 127.0.0.1 to the machine's address and listens on every interface,
so only a private network namespace keeps a test cluster off the machine's network;
and when the namespace's PID 1 ends, the kernel kills whatever the scenario left.

How: a test module is its own scenario. Its module-scoped fixture enters
``scenario_result(...)``, which runs ``python -m MODULE WORK`` inside the namespaces
under a hard time cap; the module, run so, calls ``write_result(scenario)``, which
writes what the scenario saw to ``WORK/result.json`` for the tests to judge.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
RAY_BIN = Path(sys.executable).with_name("ray")
# --kill-child: when unshare dies, so does the namespace's PID 1, and with it the rest.
UNSHARE = (
    "unshare",
    "--user",
    "--map-root-user",
    "--net",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount-proc",
)
# A PID 1 that runs the scenario and, as init does, reaps every orphan. Without it the
# scenario is PID 1 and reaps nothing: a killed raylet left a zombie looks alive to its
# workers (they watch their raylet with kill(pid, 0)), and they would run on.
REAPING_INIT = """
import os, sys
scenario = os.spawnv(os.P_NOWAIT, sys.executable, [sys.executable, *sys.argv[1:]])
while True:
    pid, status = os.wait()
    if pid == scenario:
        sys.exit(os.waitstatus_to_exitcode(status))
"""
RESULT_NAME = "result.json"
# Always dropped: a driver in the scenario must not look for a developer's cluster.
DROPPED_ENV = ("RAY_ADDRESS",)
PROBE_TIMEOUT_S = 10
OUTPUT_TAIL_CHARS = 4000


# --- the tests' side ---------------------------------------------------------------------


def unshare_problem(tools: Sequence[str] = ("unshare", "ip")) -> str | None:
    """Why a scenario cannot run here, or None when it can."""
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux, iproute2)"
    if not RAY_BIN.exists():
        return f"needs the ray CLI next to the interpreter ({RAY_BIN})"
    probe = subprocess.run(
        [*UNSHARE, "true"], capture_output=True, text=True, timeout=PROBE_TIMEOUT_S
    )
    if probe.returncode != 0:
        return f"user namespaces unavailable: {probe.stderr.strip()}"
    return None


def scenario_env(work: Path, drop: Sequence[str] = ()) -> dict[str, str]:
    """This process's environment with a fresh HOME (no developer's ~/.ray/auth_token)
    and without ``DROPPED_ENV`` and ``drop``."""
    env = os.environ | {"HOME": str(work / "home")}
    for name in (*DROPPED_ENV, *drop):
        env.pop(name, None)
    return env


@contextlib.contextmanager
def scenario_result(
    module: str,
    *,
    work_prefix: str,
    timeout_s: float,
    tools: Sequence[str] = ("unshare", "ip"),
    drop_env: Sequence[str] = (),
    reaping_init: bool = False,
) -> Iterator[dict[str, Any]]:
    """What ``module``'s scenario saw, run in namespaces of its own within ``timeout_s``.

    Skips the test where the namespaces or ``tools`` are missing; fails it where the
    scenario ran too long, wrote nothing, or reported an error. Removes the work
    directory and anything the scenario left running on the way out.
    """
    problem = unshare_problem(tools)
    if problem:
        pytest.skip(problem)
    # Short, so Ray's Unix socket paths under it stay below 108 bytes (not pytest's tmp_path).
    work = Path(tempfile.mkdtemp(prefix=work_prefix, dir="/tmp"))
    init = ["-c", REAPING_INIT] if reaping_init else []
    proc = subprocess.Popen(
        [*UNSHARE, sys.executable, *init, "-m", module, str(work)],
        cwd=REPO_ROOT,
        env=scenario_env(work, drop_env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        try:
            output, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the scenario ran past {timeout_s} s")
        yield _read_result(work, output.decode(errors="replace"))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def _read_result(work: Path, output: str) -> dict[str, Any]:
    result_path = work / RESULT_NAME
    if not result_path.exists():
        pytest.fail(f"scenario wrote no result:\n{output[-OUTPUT_TAIL_CHARS:]}")
    seen: dict[str, Any] = json.loads(result_path.read_text())
    if "error" in seen:
        logs = "".join(f"\n--- {name}\n{log}" for name, log in seen.get("logs", {}).items())
        pytest.fail(f"{seen['error']}:\n{seen.get('output', '')}{logs}")
    return seen


# --- the scenario's side -----------------------------------------------------------------


def write_result(scenario: Callable[[Path], dict[str, Any]]) -> None:
    """Run ``scenario`` in the work directory named on the command line and write what it
    saw, or the traceback it raised, to its ``result.json``."""
    work = Path(sys.argv[1])
    try:
        seen = scenario(work)
    except Exception:
        seen = {"error": "the scenario raised", "output": traceback.format_exc()}
    (work / RESULT_NAME).write_text(json.dumps(seen, indent=2))


def free_port(host: str) -> int:
    """A TCP port free on ``host`` just now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pids() -> list[int]:
    """Every process in this PID namespace."""
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state and parent, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[1])


def is_alive(pid: int) -> bool:
    """Running, or sleeping: neither gone nor a zombie."""
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def cmdline(pid: int) -> str:
    """A process's command line, or "" once it is gone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    return ""


def live_processes() -> list[str]:
    """Every live process in this PID namespace but init (PID 1) and this one, by
    command line: what a scenario left running. Zombies are left out: orphans go to
    PID 1, which reaps them only when it is ``REAPING_INIT``."""
    ours = {1, os.getpid()}
    return [cmdline(pid) for pid in pids() if pid not in ours and is_alive(pid)]
