"""A provider node joining an operator's Ray cluster ("Ray mode").

In Ray mode the node agent runs ``ray start --address HEAD --block`` on the
provider's machine. The raylet advertises the custom resource
``depin_node:<node_id>`` with the node's GPU count as its quantity, and the
labels ``depin.tier``, ``depin.region`` and ``depin.gpu_model``; the
coordinator's Ray driver then launches work as tasks that ask for
``{"depin_node:<node_id>": gpus}``.

What Ray mode trusts: every raylet of a cluster can run code on every other
one, and any holder of the cluster's token can drive the whole cluster. Token
authentication (``RAY_AUTH_MODE=token``) keeps out whoever does not hold the
token, and nothing more. So Ray mode is for one operator's own fleet, never
for a market of strangers (see "Two trust models" in ARCHITECTURE.md).

Ray takes the token from ``RAY_AUTH_TOKEN``, else the file named by
``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``; every process of the
cluster (head, raylets, drivers) needs ``RAY_AUTH_MODE=token`` and the same
token, and ``ray start`` refuses to start without one.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Self

# Must equal depin.runtime.executor.RESOURCE_PREFIX (a test checks); not imported from
# there because the runtime imports Ray and the agent should not need to.
RESOURCE_PREFIX = "depin_node:"
LABEL_TIER = "depin.tier"
LABEL_REGION = "depin.region"
LABEL_GPU_MODEL = "depin.gpu_model"

# `ray start` prints this once the node is registered with the GCS (it polls the GCS for
# its own node before printing), so for a raylet it means "joined".
STARTED_MARKER = "Ray runtime started."
OUTPUT_TAIL_BYTES = 8192
POLL_S = 0.05
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Ray label values follow Kubernetes label syntax: at most 63 characters of
# [A-Za-z0-9_.-], beginning and ending with an alphanumeric.
_LABEL_VALUE_MAX_CHARS = 63
_NOT_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_EDGE_NON_ALNUM = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")


@dataclass(frozen=True, slots=True)
class RayletSpec:
    """What one depin node advertises to Ray."""

    node_id: int
    gpus: int
    tier: str
    region: str
    gpu_model: str

    def __post_init__(self) -> None:
        if self.node_id < 1 or self.gpus < 1:
            raise ValueError(f"node_id and gpus must be >= 1, got {self.node_id}, {self.gpus}")

    @property
    def resource(self) -> str:
        return f"{RESOURCE_PREFIX}{self.node_id}"

    def labels(self) -> dict[str, str]:
        return {
            LABEL_TIER: label_value(self.tier),
            LABEL_REGION: label_value(self.region),
            LABEL_GPU_MODEL: label_value(self.gpu_model),
        }


@dataclass(frozen=True, slots=True)
class HealthChecks:
    """How fast the head's GCS declares a silent raylet dead (read on the head only).

    A check runs every ``period_ms``; ``failure_threshold`` failed checks in a row mark
    the raylet dead. A raylet whose port refuses is seen dead in about
    ``failure_threshold * period_ms`` (1.5 s here, 15 s with Ray's defaults of 3 s and
    5); a vanished host costs up to ``timeout_ms`` more per check. Too tight a timeout
    marks raylets behind slow links dead: widen it for WAN edges.
    """

    period_ms: int = 500
    timeout_ms: int = 1000
    failure_threshold: int = 3
    initial_delay_ms: int = 0

    def env(self) -> dict[str, str]:
        return {
            "RAY_health_check_period_ms": str(self.period_ms),
            "RAY_health_check_timeout_ms": str(self.timeout_ms),
            "RAY_health_check_failure_threshold": str(self.failure_threshold),
            "RAY_health_check_initial_delay_ms": str(self.initial_delay_ms),
        }


def label_value(text: str) -> str:
    """``text`` as a valid Ray label value: ``"RTX 4090"`` becomes ``"RTX-4090"``."""
    value = _EDGE_NON_ALNUM.sub("", _NOT_LABEL_CHARS.sub("-", text))
    # Again after truncating, which can leave a "-" at the end.
    return _EDGE_NON_ALNUM.sub("", value[:_LABEL_VALUE_MAX_CHARS])


def _labels_arg(labels: Mapping[str, str]) -> str:
    # Ray 2.60's `--labels` takes "k1=v1,k2=v2" (it splits on "," and "=", no quoting).
    return ",".join(f"{key}={value}" for key, value in labels.items())


def raylet_command(
    spec: RayletSpec,
    address: str,
    *,
    ray_bin: str = "ray",
    temp_dir: str | None = None,
    node_ip: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``ray start`` for a raylet that joins ``address`` (``host:port`` of the head's GCS)."""
    argv = [
        ray_bin,
        "start",
        f"--address={address}",
        "--block",
        # The raylet sells exactly the node's listed GPUs, not whatever Ray detects.
        f"--num-gpus={spec.gpus}",
        f"--resources={json.dumps({spec.resource: spec.gpus})}",
        f"--labels={_labels_arg(spec.labels())}",
        "--disable-usage-stats",
    ]
    if temp_dir is not None:
        argv.append(f"--temp-dir={temp_dir}")
    if node_ip is not None:
        argv.append(f"--node-ip-address={node_ip}")
    return argv + list(extra_args)


def head_command(
    port: int,
    *,
    ray_bin: str = "ray",
    temp_dir: str | None = None,
    node_ip: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """``ray start --head`` for an operator's head that runs no work of its own.

    Without the dashboard (pass ``--include-dashboard=true`` in ``extra_args`` for
    one): it costs a core-second to start and serves nothing the coordinator needs.
    """
    argv = [
        ray_bin,
        "start",
        "--head",
        f"--port={port}",
        "--block",
        # Work goes to raylets by their depin_node resource; the head only coordinates.
        "--num-cpus=0",
        "--num-gpus=0",
        "--include-dashboard=false",
        "--disable-usage-stats",
    ]
    if temp_dir is not None:
        argv.append(f"--temp-dir={temp_dir}")
    if node_ip is not None:
        argv.append(f"--node-ip-address={node_ip}")
    return argv + list(extra_args)


def raylet_env(base: Mapping[str, str], token_path: str | None) -> dict[str, str]:
    """``base`` with token authentication on, reading the token from ``token_path``."""
    env = dict(base)
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    if token_path is not None:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
        # RAY_AUTH_TOKEN outranks the path; drop it so the operator's file is what counts.
        env.pop("RAY_AUTH_TOKEN", None)
    return env


def head_env(
    base: Mapping[str, str], token_path: str | None, health: HealthChecks | None = None
) -> dict[str, str]:
    """The head's environment: token authentication and, optionally, faster health checks."""
    env = raylet_env(base, token_path)
    if health is not None:
        env.update(health.env())
    return env


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when the thread that started
    it ends, however it ends (Linux only; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here, in the parent: the forked child should not load libraries.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.restype = ctypes.c_int
    prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
    parent = os.getpid()

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # it died before the prctl: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


class RayStart:
    """A ``ray start --block`` child in its own process group, that dies with its starter.

    ``ray start`` runs the raylet, its agents and their workers as children in its
    process group, so killing the group ends the node. The leader is never reaped
    before the group has been killed: a reaped leader frees its pid, and that pid,
    reused as another group's id, would turn ``killpg`` onto a stranger.

    ``ray start`` gets SIGKILL from the kernel when the thread that called ``start``
    ends (PR_SET_PDEATHSIG; start it from a thread that lives as long as the node), and
    Ray has its own children die with it the same way. Its own process group keeps it
    out of its starter's Ctrl-C, so without this a node agent killed with SIGKILL (the
    OOM killer, ``kill -9``) could not stop its raylet, and the raylet would live on in
    the cluster, running work that the market, seeing the agent silent, has already
    declared lost and given to another node.
    """

    def __init__(self, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.argv = list(argv)
        self._env = dict(env)
        self._proc: subprocess.Popen[bytes] | None = None
        self._tail = bytearray()
        self._started = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """The leader's pid, which is also the process group's id."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("already started")
        self._proc = subprocess.Popen(
            self.argv,
            # Unbuffered, so the "started" line arrives when `ray start` prints it.
            env=self._env | {"PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(),
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._tail += line
            del self._tail[:-OUTPUT_TAIL_BYTES]
            if STARTED_MARKER.encode() in line:
                self._started.set()

    def alive(self) -> bool:
        if self._proc is None or self._proc.returncode is not None:
            return False
        # WNOWAIT: look without reaping (see the class docstring).
        flags = os.WEXITED | os.WNOHANG | os.WNOWAIT
        return os.waitid(os.P_PID, self._proc.pid, flags) is None

    def wait_started(self, timeout_s: float) -> bool:
        """Whether the node came up (for a raylet: joined the cluster) within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._started.wait(POLL_S):
                return True
            if not self.alive():
                return False
        return self._started.is_set()

    def output_tail(self) -> str:
        """The last lines ``ray start`` printed: why it failed, when it did."""
        return self._tail.decode(errors="replace")

    def stop(self, timeout_s: float = 10) -> int | None:
        """SIGTERM ``ray start``, SIGKILL its group after ``timeout_s``; its exit status.

        On SIGTERM ``ray start`` drains the node (the GCS places no more work there;
        Ray waits up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S, 30 s, for it to go
        idle), then ends its children and exits 1, by design. Only the leader gets
        the SIGTERM: a raylet signalled directly dies without that drain.
        """
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            # os.kill, not Popen.send_signal: that polls, and polling reaps.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._proc.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout_s
            while self.alive() and time.monotonic() < deadline:
                time.sleep(POLL_S)
            # Also after a clean exit: stray workers or agents go with the group.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        code = self._proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=1)
        return code

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Raylet(RayStart):
    """One depin node's raylet, joined to the operator's cluster at ``address``."""

    def __init__(
        self,
        spec: RayletSpec,
        address: str,
        *,
        token_path: str | None,
        ray_bin: str = "ray",
        temp_dir: str | None = None,
        node_ip: str | None = None,
        extra_args: Sequence[str] = (),
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        argv = raylet_command(
            spec,
            address,
            ray_bin=ray_bin,
            temp_dir=temp_dir,
            node_ip=node_ip,
            extra_args=extra_args,
        )
        super().__init__(argv, raylet_env(os.environ if base_env is None else base_env, token_path))
        self.spec = spec
