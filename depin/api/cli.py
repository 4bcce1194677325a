"""``depin serve``: the market over HTTP, with its scheduler loop beside it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import click


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8420, show_default=True)
@click.option("--no-scheduler", is_flag=True, help="Serve the API only; schedule elsewhere.")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="API processes; with more than one the scheduler runs as a process of its own.",
)
def serve(host: str, port: int, no_scheduler: bool, workers: int) -> None:
    """Serve the market's HTTP API (FastAPI on uvicorn) until SIGTERM or Ctrl-C.

    Configuration is as for every command (DEPIN_HOME, DEPIN_DATABASE_URL,
    DEPIN_RAY_ADDRESS). The first start makes the operator's key (local key
    `operator`), which signs deposits.
    """
    import uvicorn

    from depin.client import Client

    signal.signal(signal.SIGTERM, _exit_0)

    os.environ.pop("DEPIN_API_URL", None)  # this process is the market, not its client
    with Client() as client:
        info = client.init()
    click.echo(
        f"market {info['market_id']} on http://{host}:{port} ({info['database']}); "
        f"{'no scheduler' if no_scheduler else 'scheduler on'}; Ctrl-C to stop",
        err=True,
    )
    if workers == 1:
        uvicorn.run(
            "depin.api.server:app_with_scheduler" if not no_scheduler else "depin.api.server:app",
            factory=True,
            host=host,
            port=port,
            log_level="warning",
        )
        return
    scheduler = None
    if not no_scheduler:  # one loop for all the workers, in a process of its own
        scheduler = subprocess.Popen([sys.executable, "-m", "cli", "scheduler", "run"])
    try:
        uvicorn.run(
            "depin.api.server:app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level="warning",
        )
    finally:
        if scheduler is not None:
            scheduler.send_signal(signal.SIGINT)  # it requeues what it ran, then exits
            scheduler.wait(timeout=60)


def _exit_0(signum: int, frame: object) -> None:
    """SIGTERM outside uvicorn's own handler: exit 0, as on Ctrl-C.

    uvicorn stops gracefully on SIGTERM (the scheduler loop with it), then raises the
    signal again for the handler it replaced; under the default one the process would
    die by the signal (exit -15) after a clean stop. Before uvicorn starts, it stops here.
    """
    raise SystemExit(0)
