"""``depin demo``: the whole path of a job on the embedded default, in about a minute.

Providers register a fleet in three tiers at real city coordinates; a developer
signs and submits jobs with different goals; the scheduler places them by cost,
locality and latency; Ray runs them; the ledger settles and verifies.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from depin.client import Client
from depin.config import ENV_HOME, Settings
from depin.errors import ConflictError, DepinError
from depin.money import format_usd
from depin.render import balances_table
from depin.spec import JobSpec
from depin.views import JobView
from providers.fleet import DEMO_NODES, city, demo_fleet, nearest_city

DEVELOPER = "ada"
DEPOSIT_USD = "100"
RUN_TIMEOUT_S = 90

_BERLIN, _PARIS, _SYDNEY = city("Berlin", "DE"), city("Paris", "FR"), city("Sydney", "AU")
_HELLO = "import os; print('hello from the edge: node', os.environ['DEPIN_NODE_ID'])"
_BATCH = (
    "import hashlib, os\n"
    "h = b'seed'\n"
    "for _ in range(200_000): h = hashlib.sha256(h).digest()\n"
    "print('embedded 200k chunks on node', os.environ['DEPIN_NODE_ID'], h.hex()[:16])"
)

DEMO_JOBS: tuple[tuple[str, JobSpec], ...] = (
    (
        "latency-critical inference for users in Berlin",
        JobSpec.model_validate(
            {
                "name": "chat-llama3-8b",
                "command": ["python", "-c", _HELLO],
                "resources": {"gpus": 1, "vram_gib": 16, "gpu_models": ["RTX 4090", "L4"]},
                "placement": {
                    "near": [{"lat": _BERLIN.lat, "lon": _BERLIN.lon}],
                    "max_latency_ms": 20,
                    "tiers": ["device", "edge"],
                },
                "pricing": {"max_usd_per_gpu_hour": "1.50", "budget_usd": "5.00"},
                "objective": {"cost": 0.2, "latency": 0.7, "reliability": 0.1},
                "max_duration_s": 120,
            }
        ),
    ),
    (
        "cost-driven batch job, anywhere",
        JobSpec.model_validate(
            {
                "name": "nightly-embeddings",
                "command": ["python", "-c", _BATCH],
                "resources": {"gpus": 4, "vram_gib": 40},
                "pricing": {"max_usd_per_gpu_hour": "2.00"},
                "objective": {"cost": 1.0, "latency": 0.0, "reliability": 0.0},
                "max_duration_s": 600,
            }
        ),
    ),
    (
        "data residency: EU only, near Paris",
        JobSpec.model_validate(
            {
                "name": "eu-medical-imaging",
                "command": ["python", "-c", _HELLO],
                "resources": {"gpus": 2, "vram_gib": 24},
                "placement": {
                    "near": [{"lat": _PARIS.lat, "lon": _PARIS.lon}],
                    "max_latency_ms": 40,
                    "regions": ["eu"],
                },
                "pricing": {"max_usd_per_gpu_hour": "1.50", "budget_usd": "20"},
                "max_duration_s": 300,
            }
        ),
    ),
    (
        "AR overlay for Sydney under 15 ms (no node is near enough)",
        JobSpec.model_validate(
            {
                "name": "sydney-ar-overlay",
                "command": ["python", "-c", _HELLO],
                "resources": {"gpus": 1},
                "placement": {
                    "near": [{"lat": _SYDNEY.lat, "lon": _SYDNEY.lon}],
                    "max_latency_ms": 15,
                },
                "max_duration_s": 60,
            }
        ),
    ),
)


def run_demo(console: Console, *, keep: bool = False) -> None:
    started = time.monotonic()
    own_home = not os.environ.get(ENV_HOME)
    home = Path(tempfile.mkdtemp(prefix="depin-demo-")) if own_home else None
    client = Client(settings=Settings.from_env(home=home))
    try:
        _run(client, console)
    finally:
        client.close()
        if home is not None and not keep:
            shutil.rmtree(home, ignore_errors=True)
        elif home is not None:
            console.print(f"kept DEPIN_HOME={home}")
    console.print(f"demo finished in {time.monotonic() - started:.1f} s")


def _run(client: Client, console: Console) -> None:
    console.rule("[bold]depin demo")
    console.print(f"DEPIN_HOME {client.settings.home}   marketplace {client.market_id}")
    _register_fleet(client, console)
    _ensure_identity(client, DEVELOPER, "developer")
    client.deposit(DEVELOPER, DEPOSIT_USD)
    console.print(f"developer [bold]{DEVELOPER}[/bold] deposited ${DEPOSIT_USD}")

    submitted: dict[int, str] = {}
    refused: list[tuple[str, JobSpec, DepinError]] = []
    for goal, spec in DEMO_JOBS:
        try:
            view = client.submit(spec, account=DEVELOPER)
        except DepinError as exc:
            refused.append((goal, spec, exc))
            continue
        submitted[view.id] = goal
        console.print(f"submitted signed job {view.id} [bold]{spec.name}[/bold]: {goal}")

    console.print("scheduling and running on Ray (starting a local instance) ...")
    with client.driver(kind="demo", job_ids=list(submitted)) as driver:
        driver.run(
            until=lambda: all(client.job(j).terminal for j in submitted), timeout_s=RUN_TIMEOUT_S
        )
    _print_results(client, console, submitted, refused)
    _print_ledger(client, console)


def _ensure_identity(client: Client, name: str, kind: str) -> None:
    """Create the key and account unless a kept DEPIN_HOME has them from an earlier run."""
    local = [k.name for k in client.local_keys()]
    if name not in local:
        client.new_key(name)
    with contextlib.suppress(ConflictError):
        client.create_account(name, key=name, kind=kind)


def _register_fleet(client: Client, console: Console) -> None:
    for provider in dict.fromkeys(p for p, *_ in DEMO_NODES):
        _ensure_identity(client, provider, "provider")
    if not client.nodes():
        for spec in demo_fleet():
            client.add_node(spec)
    nodes = client.nodes()
    table = Table(title=f"fleet: {len(nodes)} nodes", title_justify="left")
    for col in ("id", "provider", "gpu", "gpus", "$/GPU-h", "city", "tier", "region", "network"):
        table.add_column(col)
    for n in nodes:
        table.add_row(
            str(n.id),
            n.provider,
            n.gpu_model,
            str(n.gpus),
            f"{n.price_usd_per_gpu_hour:.2f}",
            nearest_city(n.lat, n.lon),
            n.tier,
            n.region,
            n.network,
        )
    console.print(table)


def _print_results(
    client: Client,
    console: Console,
    submitted: dict[int, str],
    refused: list[tuple[str, JobSpec, DepinError]],
) -> None:
    nodes = {n.id: n for n in client.nodes()}
    table = Table(title="jobs", title_justify="left")
    for col in ("job", "goal", "node", "city", "gpu", "rtt ms", "$/GPU-h", "cost", "outcome"):
        table.add_column(col)
    for job_id, goal in submitted.items():
        view = client.job(job_id)
        a = view.allocation
        n = nodes.get(a.node_id) if a else None
        table.add_row(
            f"{view.id} {view.name}",
            goal,
            str(a.node_id) if a else "-",
            nearest_city(n.lat, n.lon) if n else "-",
            f"{a.gpus}x {n.gpu_model}" if a and n else "-",
            f"{a.rtt_ms:.1f}" if a and a.rtt_ms is not None else "-",
            f"{a.price_usd_per_gpu_hour:.2f}" if a else "-",
            format_usd(a.cost_micro_usd) if a and a.cost_micro_usd is not None else "-",
            _outcome(view),
        )
    for goal, spec, exc in refused:
        table.add_row(f"- {spec.name}", goal, "-", "-", "-", "-", "-", "-", f"refused: {exc}")
    console.print(table)


def _outcome(view: JobView) -> str:
    a = view.allocation
    if view.state == "succeeded" and a is not None:
        first = (a.output_tail or "").strip().splitlines()
        return f"succeeded: {first[-1] if first else ''}"
    if a is not None and a.error:
        return f"{view.state}: {a.error}"
    return view.state


def _print_ledger(client: Client, console: Console) -> None:
    moved = [
        b for b in client.balances() if b.debits_posted or b.credits_posted or b.debits_pending
    ]
    console.print(balances_table(moved, title="ledger balances"))
    report = client.verify_ledger()
    if report.ok:
        console.print(
            f"ledger verify: [bold green]ok[/bold green] ({report.entries} entries, "
            "hash chain intact, "
            "debits = credits)"
        )
    else:
        console.print(f"ledger verify: [bold red]FAILED[/bold red] {report.problems[0]}")
