"""``depin agent run``: the program a provider runs on the machine behind a node."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType

import click
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin.config import Settings
from depin.errors import ConfigError, KeyFileError
from depin.keys import load_private
from depin.limits import AGENT_HEARTBEAT_INTERVAL_S
from depin.runtime import sandbox
from providers.agent import hardware
from providers.agent.link import Coordinator, HttpCoordinator, public_node
from providers.agent.pull import DEFAULT_MEMORY_GIB, AgentOptions, PullAgent
from providers.agent.raymode import serve_ray


@click.group()
def agent() -> None:
    """The node agent: serve a node from the machine it stands for."""


@agent.command("run")
@click.option("--node", "node_id", type=click.IntRange(1), required=True, help="The node served.")
@click.option("--api", envvar="DEPIN_API_URL", help="The coordinator (`depin serve`) to pull from.")
@click.option("--ray-address", help="Ray mode: join this Ray cluster (one operator's fleet).")
@click.option(
    "--ray-token-path",
    envvar="RAY_AUTH_TOKEN_PATH",
    type=click.Path(dir_okay=False),
    help="Ray mode: the operator's token (RAY_AUTH_MODE=token).",
)
@click.option("--key", help="The provider's local key (default: the key named as the provider).")
@click.option(
    "--simulate-gpus",
    type=click.IntRange(1, 1024),
    help="Stand in this many GPUs on a machine without any (CI, a laptop demo).",
)
@click.option(
    "--insecure-no-sandbox",
    is_flag=True,
    help="Run jobs without bubblewrap: they can read whatever this user can. Never for strangers.",
)
@click.option(
    "--heartbeat-interval-s",
    type=click.FloatRange(0.1, 60),
    default=AGENT_HEARTBEAT_INTERVAL_S,
    show_default=True,
)
@click.option(
    "--memory-gib",
    type=click.FloatRange(0.1, 4096),
    default=DEFAULT_MEMORY_GIB,
    show_default=True,
    help="A job's memory limit when its manifest sets none.",
)
def run(
    node_id: int,
    api: str | None,
    ray_address: str | None,
    ray_token_path: str | None,
    key: str | None,
    simulate_gpus: int | None,
    insecure_no_sandbox: bool,
    heartbeat_interval_s: float,
    memory_gib: float,
) -> None:
    """Serve node --node until SIGTERM or Ctrl-C.

    Pull mode (the default; --api or DEPIN_API_URL): heartbeat, long-poll for the
    node's allocations, run each in a sandbox, sign its receipts, report. Ray mode
    (--ray-address): start a raylet that joins the operator's Ray cluster, and
    heartbeat. Without --api either way speaks to the market in DEPIN_HOME.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "alembic"):  # a line per request or migration drowns the rest
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings.from_env(api_url=api)
    machine = hardware.detect(simulate_gpus)
    if ray_address is None:
        _sandbox_or_refuse(insecure_no_sandbox)
    coordinator = _coordinator(settings, key, node_id)
    node = coordinator.node(node_id)
    hardware.check(machine, node_id, node.gpus, node.gpu_model)
    stopping = threading.Event()
    _stop_on_signals(stopping)
    mode = f"Ray mode, cluster {ray_address}" if ray_address else "pull mode"
    where = settings.api_url or "the market in DEPIN_HOME"
    gpus = f"{machine.gpus} simulated GPU(s)" if machine.simulated else f"{machine.gpus} GPU(s)"
    click.echo(f"agent for node {node_id} ({gpus}): {mode}, {where}; Ctrl-C to stop", err=True)
    if ray_address is not None:
        serve_ray(
            coordinator,
            machine,
            node_id,
            address=ray_address,
            token_path=ray_token_path,
            interval_s=heartbeat_interval_s,
            stopping=stopping,
        )
        return
    options = AgentOptions(
        node_id,
        interval_s=heartbeat_interval_s,
        sandboxed=not insecure_no_sandbox,
        hidden=_hidden(settings),
        default_memory_gib=memory_gib,
    )
    PullAgent(coordinator, _provider_key(settings, key, node.provider), machine, options).run(
        stopping
    )


def _sandbox_or_refuse(insecure: bool) -> None:
    problem = sandbox.unavailable()
    if problem is None:
        return
    if not insecure:
        raise ConfigError(
            f"jobs cannot be sandboxed here ({problem}): install bubblewrap "
            "(apt-get install bubblewrap), or pass --insecure-no-sandbox to run them unconfined"
        )
    click.secho(
        f"WARNING: jobs run WITHOUT a sandbox ({problem}): job code can read every file this "
        "user can, including the provider's keys. Never serve strangers like this.",
        err=True,
        fg="red",
        bold=True,
    )


def _coordinator(settings: Settings, key: str | None, node_id: int) -> Coordinator:
    if settings.api_url is None:
        from depin.market import Marketplace

        return Marketplace(settings)  # type: ignore[return-value]
    # The node's provider is public (the node list); its key must be here.
    provider = public_node(settings.api_url, node_id).provider
    return HttpCoordinator(settings.api_url, _provider_key(settings, key, provider))


def _provider_key(settings: Settings, key: str | None, provider: str) -> Ed25519PrivateKey:
    name = key or provider
    try:
        return load_private(name, settings.keys_dir)
    except KeyFileError as exc:
        raise KeyFileError(
            f"{exc} (the agent signs as provider {provider!r}: --key NAME)"
        ) from None


def _hidden(settings: Settings) -> tuple[str, ...]:
    """What a job must never see: the agent's home (keys, database) and Ray's token."""
    paths = [str(settings.home)]
    token = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if token:
        paths.append(token)
    paths.append(str(Path.home() / ".ray"))
    return tuple(paths)


def _stop_on_signals(stopping: threading.Event) -> None:
    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
