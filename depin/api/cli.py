"""``depin serve``: the market over HTTP, with its scheduler loop beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click

from depin.api.server import ENV_LOCAL_RAY
from depin.limits import LONG_POLL_CHECK_S

# How long a stopping server lets requests in flight finish: agents' held long-polls are
# then cut short (they ask again, of another server or of this one restarted).
GRACEFUL_SHUTDOWN_S = max(1, round(2 * LONG_POLL_CHECK_S))


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8420, show_default=True)
@click.option("--no-scheduler", is_flag=True, help="Serve the API only; schedule elsewhere.")
@click.option(
    "--no-launch",
    is_flag=True,
    help="The scheduler reserves capacity and money only and never starts Ray; the "
    "allocations wait for a launcher (as `scheduler run --no-launch`).",
)
@click.option(
    "--local-ray",
    is_flag=True,
    help="Run the work of nodes that have no agent on a Ray instance on this machine: for "
    "one operator's own demo, never for strangers (their code would run beside your keys).",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="API processes; with more than one the scheduler runs as a process of its own.",
)
def serve(
    host: str, port: int, no_scheduler: bool, no_launch: bool, local_ray: bool, workers: int
) -> None:
    """Serve the market's HTTP API (FastAPI on uvicorn) until SIGTERM or Ctrl-C.

    Configuration is as for every command (DEPIN_HOME, DEPIN_DATABASE_URL,
    DEPIN_RAY_ADDRESS). The first start makes the operator's key (local key
    `operator`), which signs deposits.
    """
    import uvicorn

    from depin.client import Client

    signal.signal(signal.SIGTERM, _exit_0)

    os.environ.pop("DEPIN_API_URL", None)  # this process is the market, not its client
    os.environ[ENV_LOCAL_RAY] = "1" if local_ray else "0"  # read by the app in each worker
    with Client() as client:
        info = client.init()
    click.echo(
        f"market {info['market_id']} on http://{host}:{port} ({info['database']}); "
        f"{_scheduler_mode(no_scheduler, no_launch)}; Ctrl-C to stop",
        err=True,
    )
    if workers == 1:
        uvicorn.run(
            _factory(no_scheduler, no_launch),
            factory=True,
            host=host,
            port=port,
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
        return
    scheduler = None
    if not no_scheduler:  # one loop for all the workers, in a process of its own
        launch = ["--no-launch"] if no_launch else []
        local = [] if local_ray else ["--no-local-ray"]
        argv = [sys.executable, "-m", "cli", "scheduler", "run", *launch, *local]
        scheduler = subprocess.Popen(argv)
    try:
        uvicorn.run(
            "depin.api.server:app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    finally:
        if scheduler is not None:
            scheduler.send_signal(signal.SIGINT)  # it requeues what it ran, then exits
            scheduler.wait(timeout=60)


def _factory(no_scheduler: bool, no_launch: bool) -> str:
    """The app factory (``depin.api.server``) uvicorn imports in this process."""
    if no_scheduler:
        return "depin.api.server:app"
    if no_launch:
        return "depin.api.server:app_with_reserving_scheduler"
    return "depin.api.server:app_with_scheduler"


def _scheduler_mode(no_scheduler: bool, no_launch: bool) -> str:
    if no_scheduler:
        return "no scheduler"
    return "scheduler on (reserving only)" if no_launch else "scheduler on"


def _exit_0(signum: int, frame: object) -> None:
    """SIGTERM outside uvicorn's own handler: exit 0, as on Ctrl-C.

    uvicorn stops gracefully on SIGTERM (the scheduler loop with it), then raises the
    signal again for the handler it replaced; under the default one the process would
    die by the signal (exit -15) after a clean stop. Before uvicorn starts, it stops here.
    """
    raise SystemExit(0)
