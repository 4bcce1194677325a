"""The processes a benchmark starts: ``depin serve`` and agents on loopback, each in a
process group of its own, ended by the bench that started it (never by name)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx

from depin.errors import RemoteError

READY_TIMEOUT_S = 60.0  # imports, migrations and uvicorn on a busy 2-core machine
LOG_TAIL_BYTES = 2000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without its depin settings, pointed at ``home``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEPIN_")}
    return env | {"DEPIN_HOME": str(home), **extra}


class Group:
    """A command in a process group of its own (its children with it), output to a log."""

    def __init__(self, command: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.path = log
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            list(command),
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self) -> str:
        """The end of its output, for an error (the log goes with the temporary home)."""
        text = self.path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace").strip()
        return text or "(no output)"

    def kill(self) -> None:
        """SIGKILL to the whole group: the machine behind a node dies."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def terminate(self) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout_s: float) -> bool:
        """SIGTERM, then SIGKILL if still up ``timeout_s`` later; whether SIGTERM sufficed."""
        self.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        exited = not self.alive()
        self.close()
        return exited

    def close(self) -> None:
        self.kill()
        self.log.close()


def wait_ready(server: Group, url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    """Until ``depin serve`` at ``url`` answers /readyz; RemoteError, with its output's end,
    if it exits or is not ready in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            raise RemoteError(f"depin serve exited with {server.proc.returncode}: {server.tail()}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RemoteError(f"depin serve was not ready within {timeout_s:g} s: {server.tail()}")
