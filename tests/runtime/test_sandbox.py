"""The job sandbox, run for real: each test starts bubblewrap and asks the job to misbehave."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from depin.runtime import sandbox as sandbox_module
from depin.runtime.sandbox import Sandbox, unavailable

WHY_NOT = unavailable()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no job sandbox here: {WHY_NOT}")

JOB_ENV = {"PATH": "/usr/bin:/bin"}
JOB_TIMEOUT_S = 10
MIB = 1 << 20


def run(
    sandbox: Sandbox,
    command: Sequence[str],
    workdir: Path,
    env: Mapping[str, str] = JOB_ENV,
) -> subprocess.CompletedProcess[str]:
    argv = sandbox.argv(command, str(workdir), env)
    return subprocess.run(argv, capture_output=True, text=True, timeout=JOB_TIMEOUT_S, check=False)


def shell(sandbox: Sandbox, script: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return run(sandbox, ["sh", "-c", script], workdir)


def job_dir(path: Path, sandbox: Sandbox | None = None) -> Path:
    path.mkdir(parents=True)
    (sandbox or Sandbox()).prepare_workdir(str(path))
    return path


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return job_dir(tmp_path / "job")


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A TCP port on the host's loopback that accepts connections (the backlog is enough)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


def test_a_job_cannot_read_the_agents_home(tmp_path: Path) -> None:
    home = tmp_path / "agent-home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "node.key").write_text("PRIVATE-KEY")
    workdir = job_dir(home / "jobs" / "1")

    done = shell(Sandbox(hidden=(str(home),)), f"cat {home}/keys/node.key", workdir)

    assert done.returncode != 0
    assert "PRIVATE-KEY" not in done.stdout


def test_a_hidden_path_is_masked_even_inside_a_tree_the_job_sees(workdir: Path) -> None:
    (workdir / "keys").mkdir()
    (workdir / "keys" / "node.key").write_text("PRIVATE-KEY")
    (workdir / "agent.toml").write_text("token = 'PRIVATE-TOKEN'")
    hidden = (str(workdir / "keys"), str(workdir / "agent.toml"))

    done = shell(Sandbox(hidden=hidden), "ls keys; cat keys/node.key agent.toml", workdir)

    assert done.returncode != 0
    assert "PRIVATE" not in done.stdout
    assert "node.key" not in done.stdout


def test_a_job_sees_only_the_environment_it_is_given(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPIN_AGENT_SECRET", "hunter2")

    done = run(Sandbox(), ["env"], workdir, {**JOB_ENV, "JOB_SETTING": "1"})

    seen = dict(line.split("=", 1) for line in done.stdout.splitlines())
    # HOME is the workdir unless the job's environment says otherwise; bwrap adds PWD.
    assert seen == {**JOB_ENV, "JOB_SETTING": "1", "HOME": str(workdir), "PWD": str(workdir)}


def test_a_job_cannot_see_the_agents_processes_or_their_environment(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEPIN_AGENT_SECRET", "hunter2")
    agent_cmdline = Path("/proc/self/cmdline").read_bytes().replace(b"\0", b" ").decode()
    script = 'for p in /proc/[0-9]*; do echo "$p"; cat "$p/cmdline" "$p/environ"; done'

    done = shell(Sandbox(), f"{script} 2>/dev/null | tr '\\0' ' '", workdir)

    assert "hunter2" not in done.stdout
    assert agent_cmdline not in done.stdout
    # bwrap's init, the shell, the loop's subshell and tr: nothing of the host.
    assert len([line for line in done.stdout.splitlines() if line.startswith("/proc/")]) <= 5


def test_system_directories_are_read_only(workdir: Path) -> None:
    probe = f"/usr/depin-sandbox-{uuid.uuid4().hex}"

    done = shell(Sandbox(), f"touch {probe}; grep -E ' /(usr|etc|sys) ' /proc/self/mounts", workdir)

    assert not Path(probe).exists()
    mounts = [line.split() for line in done.stdout.splitlines()]
    assert {mount[1] for mount in mounts} == {"/usr", "/etc", "/sys"}
    assert all("ro" in mount[3].split(",") for mount in mounts)


def test_the_workdir_is_writable_and_is_the_jobs_home(workdir: Path) -> None:
    done = shell(Sandbox(), 'pwd > "$HOME/where.txt"', workdir)

    assert done.returncode == 0, done.stderr
    assert (workdir / "where.txt").read_text().strip() == str(workdir)


def test_tmp_is_private_to_the_job(workdir: Path) -> None:
    host_file = Path(f"/tmp/depin-host-{uuid.uuid4().hex}")
    host_file.write_text("host")
    job_file = Path(f"/tmp/depin-job-{uuid.uuid4().hex}")
    try:
        done = shell(Sandbox(), f"test ! -e {host_file} && echo job > {job_file}", workdir)
        assert done.returncode == 0, done.stderr
        assert not job_file.exists()
    finally:
        host_file.unlink()


def test_a_job_has_no_network_by_default(workdir: Path, host_listener: int) -> None:
    connect = f"import socket; socket.create_connection(('127.0.0.1', {host_listener}), 2)"

    done = run(Sandbox(), [sys.executable, "-c", connect], workdir)

    assert done.returncode != 0
    assert "ConnectionRefusedError" in done.stderr


def test_a_job_that_asks_for_the_network_reaches_the_host(
    workdir: Path, host_listener: int
) -> None:
    connect = f"import socket; socket.create_connection(('127.0.0.1', {host_listener}), 2)"

    done = run(Sandbox(network=True), [sys.executable, "-c", connect], workdir)

    assert done.returncode == 0, done.stderr


def test_memory_beyond_the_limit_is_refused(workdir: Path) -> None:
    allocate = f"bytearray({512 * MIB})"

    done = run(Sandbox(memory_bytes=128 * MIB), [sys.executable, "-c", allocate], workdir)

    assert done.returncode != 0
    assert "MemoryError" in done.stderr


def test_memory_within_the_limit_is_granted(workdir: Path) -> None:
    allocate = f"bytearray({16 * MIB})"

    done = run(Sandbox(memory_bytes=128 * MIB), [sys.executable, "-c", allocate], workdir)

    assert done.returncode == 0, done.stderr


def test_a_fork_bomb_is_bounded_by_the_process_limit(workdir: Path) -> None:
    # Each sleep holds its slot; the shell gives up at the first refused fork, and the
    # PID namespace's end takes the sleeps with it.
    bomb = "n=0; while [ $n -lt 200 ]; do sleep 30 & n=$((n + 1)); echo $n; done"

    done = shell(Sandbox(max_processes=32), bomb, workdir)

    started = int(done.stdout.split()[-1])
    assert started < 32
    assert "Cannot fork" in done.stderr


def test_the_agents_python_runs_inside(workdir: Path) -> None:
    done = run(Sandbox(), [sys.executable, "-c", "import sys; print(sys.prefix)"], workdir)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == sys.prefix


def test_gpu_device_nodes_present_on_the_host_are_bound_in(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for /dev/nvidia0: the same pattern, somewhere this test can create it.
    device = tmp_path / "dev" / "nvidia0"
    device.parent.mkdir()
    device.touch()
    monkeypatch.setattr(sandbox_module, "GPU_DEVICE_PATTERNS", (str(device.parent / "nvidia*"),))

    done = shell(Sandbox(), f"test -e {device}", workdir)

    assert done.returncode == 0, done.stderr


def test_a_job_never_runs_as_root() -> None:
    with pytest.raises(ValueError, match="never runs as root"):
        Sandbox(uid=0)
