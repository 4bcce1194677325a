"""Running an untrusted job's command under bubblewrap.

A job in the sandbox gets:

- its working directory (writable, its ``HOME``) and the environment it was
  given, nothing inherited from the agent;
- the system directories (``/usr``, ``/etc``, ``/sys``, the ``/lib`` links) and
  the agent's Python, all read-only; no other host path: no ``/home``,
  ``/root``, ``/var``, ``/opt``, nor the agent's files;
- a private ``/tmp`` and ``/dev/shm``, a minimal ``/dev`` with the GPU device
  nodes, its own PID, IPC and UTS namespaces and a fresh ``/proc``, so it sees
  no host process and no process's environment;
- no network unless asked (a fresh network namespace has only loopback);
- ``hidden`` paths masked wherever they would be visible: an empty tmpfs over a
  directory, ``/dev/null`` over a file;
- limits on memory (``RLIMIT_DATA``) and on processes (``RLIMIT_NPROC``), set
  inside the sandbox once it has its own user namespace, so a job is counted
  on its own and not with every process of the same uid on the host;
- when the agent runs as root, an unprivileged uid (``nobody`` by default): a
  job never runs as root.

What it does not give:

- rlimits are per-process approximations, not cgroups: ``RLIMIT_DATA`` caps
  each process's heap and anonymous memory, so N processes may use N times
  the limit, and GPU memory, page cache and files in ``/tmp`` and ``/dev/shm``
  (each capped at ``memory_bytes`` on its own) are not counted;
- every GPU device node on the host is bound in, not only the job's GPUs;
- wall time, CPU share and disk quota are the caller's business.

Use: ``sandbox.prepare_workdir(workdir)``, then
``subprocess.Popen(sandbox.argv(command, workdir, env))``; no ``preexec_fn``.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePath

BWRAP = "bwrap"
NOBODY = 65534
DEFAULT_MAX_PROCESSES = 1024
# Read-only system trees: a shell, the C library, CUDA's user-space driver (which also
# reads /sys for the PCI topology) and the certificates a networked job needs.
SYSTEM_PATHS = ("/usr", "/etc", "/sys", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
GPU_DEVICE_PATTERNS = ("/dev/nvidia*", "/dev/dri")
PROBE_TIMEOUT_S = 10


@dataclass(frozen=True, slots=True)
class Sandbox:
    """How a job is confined: network, limits, and the host paths it must never see."""

    network: bool = False
    memory_bytes: int | None = None
    # RLIMIT_NPROC counts threads too: leave room for a PyTorch job's OpenMP threads.
    max_processes: int = DEFAULT_MAX_PROCESSES
    hidden: tuple[str, ...] = ()
    # The uid and gid a job runs as when the agent is root.
    uid: int = NOBODY
    gid: int = NOBODY

    def __post_init__(self) -> None:
        if self.memory_bytes is not None and self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes must be positive, not {self.memory_bytes}")
        if self.max_processes <= 0:
            raise ValueError(f"max_processes must be positive, not {self.max_processes}")
        if self.uid == 0 or self.gid == 0:
            raise ValueError("a job never runs as root: uid and gid must not be 0")

    def argv(self, command: Sequence[str], workdir: str, env: Mapping[str, str]) -> list[str]:
        """The command line that runs ``command`` in the sandbox, in ``workdir``, with ``env``."""
        workdir = os.path.abspath(workdir)
        job_env = {"HOME": workdir, **env}
        return [
            # bwrap's own PID 1 stays in the sandbox, and a process of the job's uid can read
            # its /proc/1/environ: bwrap must start with nothing of the agent's environment.
            _tool("env"),
            "-i",
            bwrap_path() or BWRAP,
            *self._namespaces(),
            *_mounts(workdir, self.hidden, self.memory_bytes, network=self.network),
            "--chdir",
            workdir,
            "--clearenv",
            *(arg for name, value in job_env.items() for arg in ("--setenv", name, value)),
            "--",
            *self._unprivileged(),
            *self._limits(),
            *command,
        ]

    def prepare_workdir(self, workdir: str) -> None:
        """Give ``workdir`` and what is in it to the job's uid, when the agent is root."""
        if os.geteuid() != 0:
            return
        os.chown(workdir, self.uid, self.gid)
        for root, dirs, files in os.walk(workdir):
            for name in dirs + files:
                os.chown(os.path.join(root, name), self.uid, self.gid, follow_symlinks=False)

    def _namespaces(self) -> list[str]:
        flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        flags += ["--die-with-parent", "--new-session"]
        if not self.network:
            flags.append("--unshare-net")
        if os.geteuid() != 0:
            # Explicit, so a setuid bwrap fails instead of leaving the job in the agent's
            # user namespace, where its processes would count with all of the agent's.
            flags.append("--unshare-user")
        return flags

    def _unprivileged(self) -> list[str]:
        """As root, bwrap mounts with root's rights, then the job drops them.

        Dropping before bwrap would keep it from binding what only root can reach (an
        interpreter under /root). RLIMIT_NPROC never applies to uid 0, and would count
        every process of the uid host-wide, so the job gets a uid and then its own user
        namespace, created without a limit; ``_limits`` sets the limit inside it.
        """
        if os.geteuid() != 0:
            return []
        return [
            _tool("setpriv"),
            f"--reuid={self.uid}",
            f"--regid={self.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            _tool("unshare"),
            "--user",
            "--",
        ]

    def _limits(self) -> list[str]:
        """Limits set by ``prlimit`` inside the sandbox, not by a ``preexec_fn``.

        Measured (as root, then as nobody; a loop starting 200 sleeps, limit 32, with 20
        other processes of the uid running): RLIMIT_NPROC set before bwrap let all 200
        start as root and only 9 as nobody (the host-wide count); set inside the job's
        user namespace, 30-31 started either way. preexec_fn is also unsafe in a
        threaded agent (Ray workers).

        Memory is RLIMIT_DATA, not RLIMIT_AS: CUDA reserves tens of GiB to TiB of address
        space (PROT_NONE, so not counted as data), which any useful RLIMIT_AS would
        refuse; RLIMIT_DATA (Linux >= 4.7) counts the heap and private writable mappings,
        where a process's own allocations go.
        """
        limits = [_tool("prlimit"), f"--nproc={self.max_processes}", "--core=0"]
        if self.memory_bytes is not None:
            limits.append(f"--data={self.memory_bytes}")
        return [*limits, "--"]


def _mounts(
    workdir: str, hidden: Sequence[str], memory_bytes: int | None, *, network: bool
) -> list[str]:
    """bwrap's mount arguments, parents before children, so a deeper mount lies on top.

    A masked agent home still shows a job directory made inside it; a hidden path inside
    /etc or the workdir is masked. At equal depth the masks come last and win.
    """
    mounts = [*_system(), *_python(), *_devices(memory_bytes), ("/proc", ["--proc", "/proc"])]
    mounts.append(("/tmp", [*_sized(memory_bytes), "--perms", "1777", "--tmpfs", "/tmp"]))
    resolv = os.path.realpath("/etc/resolv.conf")
    if network and not _within(resolv, "/etc"):
        # A link into /run (systemd-resolved), which is not bound.
        mounts.append((resolv, ["--ro-bind-try", resolv, resolv]))
    mounts.append((workdir, ["--bind", workdir, workdir]))
    mounts += _masks(hidden)
    mounts = [*_parents(mounts), *mounts]
    mounts.sort(key=lambda mount: len(PurePath(mount[0]).parts))
    return [arg for _, args in mounts for arg in args]


def _parents(mounts: Sequence[tuple[str, list[str]]]) -> Iterator[tuple[str, list[str]]]:
    """The directories above mount points, made 0755.

    bwrap would make them 0700, which the job's uid could not cross to reach its workdir
    or the interpreter.
    """
    dests = {dest for dest, _ in mounts}
    trees = [dest for dest, args in mounts if "--tmpfs" not in args]
    parents = {str(parent) for dest in dests for parent in PurePath(dest).parents}
    for parent in sorted(parents - dests - {"/"}):
        if not any(_within(parent, tree) for tree in trees):
            yield parent, ["--dir", parent]


def _system() -> Iterator[tuple[str, list[str]]]:
    for path in SYSTEM_PATHS:
        if os.path.islink(path):
            # Merged /usr: /lib -> usr/lib. Binding would follow the link; keep it a link.
            yield path, ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            yield path, ["--ro-bind", path, path]


def _python() -> Iterator[tuple[str, list[str]]]:
    """The agent's interpreter and its venv, so ``python`` runs inside."""
    prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for prefix in sorted(prefixes):
        if not any(_within(prefix, path) for path in SYSTEM_PATHS):
            yield prefix, ["--ro-bind", prefix, prefix]


def _devices(memory_bytes: int | None) -> Iterator[tuple[str, list[str]]]:
    yield "/dev", ["--dev", "/dev"]
    yield "/dev/shm", [*_sized(memory_bytes), "--perms", "1777", "--tmpfs", "/dev/shm"]
    for pattern in GPU_DEVICE_PATTERNS:
        for device in sorted(glob.glob(pattern)):
            yield device, ["--dev-bind", device, device]


def _masks(hidden: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    # Both the path as given and where it leads: either may be what a bound tree shows.
    paths = {form(path) for path in hidden for form in (os.path.abspath, os.path.realpath)}
    for path in sorted(paths):
        if os.path.isdir(path):
            yield path, ["--tmpfs", path]
        elif os.path.lexists(path):
            yield path, ["--ro-bind", "/dev/null", path]
        # A path that does not exist has nothing to hide, and a mount point for it could
        # not be made inside a read-only tree.


def _sized(memory_bytes: int | None) -> list[str]:
    """A tmpfs's pages are not the job's data: cap each at the memory limit on its own."""
    return [] if memory_bytes is None else ["--size", str(memory_bytes)]


def _within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _tool(name: str) -> str:
    """A tool's absolute path: the sandbox starts with no PATH. Under /usr, it is there too."""
    return shutil.which(name) or name


def _required_tools() -> tuple[str, ...]:
    tools = (BWRAP, "env", "prlimit")
    return (*tools, "setpriv", "unshare") if os.geteuid() == 0 else tools


def bwrap_path() -> str | None:
    """Where bubblewrap is installed, or None."""
    return shutil.which(BWRAP)


@functools.cache
def unavailable() -> str | None:
    """None when a sandbox can be started here; otherwise one line that says why not.

    Probed once: starts a default sandbox that runs ``true``.
    """
    missing = [tool for tool in _required_tools() if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install bubblewrap util-linux)"
    sandbox = Sandbox()
    with tempfile.TemporaryDirectory(prefix="depin-sandbox-probe-") as workdir:
        sandbox.prepare_workdir(workdir)
        try:
            done = subprocess.run(
                sandbox.argv(["true"], workdir, {}),
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return f"bwrap did not run a sandbox within {PROBE_TIMEOUT_S} s"
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return f"bwrap cannot start a sandbox here: {reason}"
    return None
