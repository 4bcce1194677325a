"""``depin bench``: every performance target has a command here (``--json`` for machines).

Each figure is measured in the same run as its baseline; the modules beside
this one do the measuring, this one only parses options and prints.
"""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table

from depin.render import console
from depin.render import emit as _emit

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
# What every bench's --db does (depin.bench.scratch).
DB_HELP = (
    "PostgreSQL: a scratch schema, dropped afterwards; SQLite: appends to the file. "
    "Default: a fresh SQLite file."
)
DAY_OF_NONCES = 864_000  # depin.bench.manifest's, here so that --help imports no bench


@click.group()
def bench() -> None:
    """Measure: every performance target has a command here (--json for machines)."""


@bench.command("scheduler")
@click.option("--nodes", type=click.IntRange(10, 1_000_000), default=10_000, show_default=True)
@click.option("--jobs", type=click.IntRange(1, 200_000), default=20_000, show_default=True)
@click.option(
    "--big-nodes",
    type=click.IntRange(10, 1_000_000),
    default=100_000,
    show_default=True,
    help="Fleet size for the second single-job latency figure.",
)
@click.option("--classad-jobs", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option(
    "--workload",
    type=click.Choice(["template", "distinct", "both"]),
    default="both",
    show_default=True,
    help="template: jobs from 6 templates near 300 cities; distinct: every job its own "
    "request, every node its own price.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--db", "database_url", help="Database for the batch figure. " + DB_HELP)
@json_option
def bench_scheduler(as_json: bool, workload: str, **options: Any) -> None:
    """Single decisions on a busy fleet, a whole cycle's placements/s (read, plan, commit),
    quality against an exact model, and ClassAds, per workload."""
    from depin.bench.scheduler import run

    say = None if as_json else (lambda msg: click.echo(f"... {msg}", err=True))
    workloads = ("template", "distinct") if workload == "both" else (workload,)
    data = run(progress=say, workloads=workloads, **options)
    _emit(as_json, data, lambda: _print_scheduler_bench(data))


def _print_scheduler_bench(data: dict[str, Any]) -> None:
    columns = ("workload", "nodes", "classes", "busy_gpus_pct", "decisions", "placed")
    figures = ("p50_ms", "p99_ms", "max_ms", "fitting_p99_ms", "never_fit", "never_fit_p50_ms")
    table = Table(
        *columns, "p50 ms", "p99 ms", "max ms", "p99 ms, jobs that fit", "never fit",
        "p50 ms, never fit", title="single-job decisions, on a busy fleet",
    )  # fmt: skip
    for r in data["single_job"]:
        table.add_row(*(str(r[k]) for k in (*columns, *figures)))
    console.print(table)
    table = Table(
        "workload", "placed", "read s", "plan s", "commit s", "gc s", "cycle s", "placements/s",
        "nodes scored", "pairs feasible", title="one cycle: read the pending jobs, plan, commit",
    )  # fmt: skip
    for name, b in data["batch"].items():
        work = b["plan_work"]
        table.add_row(
            name,
            f"{b['placed']:,} of {b['jobs']:,}",
            str(b["read_s"]),
            str(b["plan_s"]),
            str(b["commit_s"]),
            str(b["gc_s"]),
            str(b["cycle_s"]),
            f"[bold]{b['placements_per_s']:,}[/bold]",
            f"{work['nodes_scored']:,}" if work else f"{b['classes']:,} classes x requests",
            f"{work['pairs_feasible']:,}" if work else "-",
        )
    console.print(table)
    for key in ("quality", "quality_single_gpu"):
        for q in data[key].values():
            kind = "single-GPU jobs" if q["single_gpu"] else "jobs"
            title = (
                f"quality, {q['workload']} workload, cost-only objective "
                f"({q['jobs']:,} {kind} on {q['nodes']:,} nodes)"
            )
            table = Table(
                "strategy", "valid", "placed", "vs exact", "USD/h", "cost gap %", "s", title=title
            )
            for name, r in q["strategies"].items():
                table.add_row(
                    name,
                    "yes" if r["valid"] else f"[red]no: {r['problems']} problems[/red]",
                    str(r["placed"]),
                    f"{r['placed_vs_exact']:+d}",
                    f"{r['cost_usd_per_hour']:.2f}",
                    f"{r['cost_gap_pct']:+.2f}",
                    f"{r['seconds']:.2f}",
                )
            console.print(table)
    c = data["classads"]
    if "skipped" in c:
        console.print(f"classads: skipped: {c['skipped']}")
    else:
        console.print(
            f"feasibility, {c['jobs']} {c['workload']} jobs x {c['nodes']} nodes "
            f"({c['classes']:,} classes, {c['locations']:,} locations): ClassAds evaluates "
            f"{c['classad_pairs_evaluated_per_s']:,} pairs/s (index: {c['classad_index']})"
        )
        for name in ("class_path", "per_job_scan"):
            r = c[name]
            console.print(
                f"  depin, {name.replace('_', ' ')}: {r['evaluations_per_s']:,} evaluations/s, "
                f"deciding {r['pairs_decided_per_s']:,} pairs/s and finding "
                f"{r['feasible_pairs_per_s']:,} feasible pairs/s -> "
                f"[bold]{r['speedup_vs_classads']}x[/bold] (same feasible sets: "
                f"{r['same_feasible_sets']})"
            )


@bench.command("manifest")
@click.option("--envelopes", type=click.IntRange(10, 1_000_000), default=5000, show_default=True)
@click.option(
    "--prefilled-nonces",
    type=click.IntRange(0, 100_000_000),
    default=DAY_OF_NONCES,
    show_default=True,
    help="Nonces in the table before the clock starts (default: a day at 10 submissions/s).",
)
@click.option("--db", "database_url", help="Database for the nonces. " + DB_HELP)
@json_option
def bench_manifest(
    as_json: bool, envelopes: int, prefilled_nonces: int, database_url: str | None
) -> None:
    """Envelopes through the full path (parse, signature, claims, spec, nonce) against raw
    Ed25519."""
    from depin.bench.manifest import run

    data = run(envelopes=envelopes, prefilled=prefilled_nonces, database_url=database_url)

    def render() -> None:
        console.print(
            f"{data['envelopes']:,} envelopes x {data['rounds']} rounds "
            f"({data['payload_bytes_mean']} B payloads): [bold]{data['envelopes_per_s']:,}/s"
            f"[/bold] through the full path ({data['full_us_per_envelope']} us each, "
            f"{data['nonce_us_per_envelope']} us of it spending nonces), "
            f"{data['raw_ed25519_per_s']:,}/s raw Ed25519 -> {data['ratio']:.0%} of raw"
        )
        console.print(
            f"nonces: {data['nonces_prefilled']:,} in the table before the clock started "
            f"({data['prefill_basis']}), {data['nonces_in_table']:,} after; {data['database']}"
        )

    _emit(as_json, data, render)


@bench.command("ledger")
@click.option(
    "--allocations", type=click.IntRange(100, 1_000_000), default=20_000, show_default=True
)
@click.option(
    "--cycle",
    type=click.IntRange(1, 100_000),
    default=5_000,
    show_default=True,
    help="Allocations committed per transaction.",
)
@click.option("--db", "database_url", help="Database. " + DB_HELP)
@json_option
def bench_ledger(as_json: bool, allocations: int, cycle: int, database_url: str | None) -> None:
    """Allocations committed per second, a cycle per transaction, against one per transaction."""
    from depin.bench.ledger import run

    data = run(allocations=allocations, cycle=cycle, database_url=database_url)

    def render() -> None:
        b, o = data["batched"], data["one_per_transaction"]
        console.print(
            f"{data['allocations']:,} allocations on {data['database']}, "
            f"{data['cycle']:,} per transaction: "
            f"[bold]{data['allocations_per_s']:,}/s[/bold] committed; one per transaction "
            f"{data['one_per_transaction_per_s']:,}/s ({data['speedup']}x); "
            f"ledger ok: {data['ledger_ok']}"
        )
        console.print(
            "each side timed at its commits alone; plan records written: "
            f"batched {b['plan_records']:,} for {b['allocations']:,} allocations in "
            f"{b['transactions']:,} transactions, one per transaction {o['plan_records']:,} "
            f"for {o['allocations']:,} in {o['transactions']:,}"
        )

    _emit(as_json, data, render)


@bench.command("api")
@click.option("--clients", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--seconds", type=click.FloatRange(0.5, 600), default=20.0, show_default=True)
@click.option("--workers", type=click.IntRange(1, 16), default=1, show_default=True)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Load processes the clients are spread over.",
)
@click.option("--db", "database_url", help="Database for the server. " + DB_HELP)
@json_option
def bench_api(as_json: bool, **options: Any) -> None:
    """A live `depin serve` through the SDK: signed submissions, offers, a job's status."""
    from depin.bench.api import PHASES, run

    say = None if as_json else (lambda msg: click.echo(f"... {msg}", err=True))
    data = run(progress=say, **options)

    def render() -> None:
        table = Table(
            "phase",
            "per s",
            "p50 ms",
            "p99 ms",
            "client errors",
            "server errors",
            "rate limited",
            "idle clients",
            title=f"{data['clients']} clients, {data['database']}",
        )
        for phase in PHASES:
            r = data[phase]
            e = r["errors"]
            table.add_row(
                phase,
                f"{r['requests_per_s']:,}",
                str(r["p50_ms"]),
                str(r["p99_ms"]),
                str(e["client"]),
                str(e["server"]),
                str(e["rate_limited"]),
                str(sum(r["idle_clients"].values())),
            )
        console.print(table)
        console.print(f"ledger ok: {data['ledger_ok']}")

    _emit(as_json, data, render)


@bench.command("lifecycle")
@click.option("--agents", type=click.IntRange(2, 16), default=4, show_default=True)
@click.option(
    "--jobs",
    type=click.IntRange(1, 500),
    default=200,
    show_default=True,
    help="Jobs submitted one at a time on idle capacity.",
)
@click.option(
    "--long-jobs",
    type=click.IntRange(0, 200),
    default=36,
    show_default=True,
    help="1-second jobs that keep half the agents busy (a short job after every third).",
)
@click.option("--throughput-jobs", type=click.IntRange(1, 1000), default=100, show_default=True)
@click.option("--submitters", type=click.IntRange(1, 64), default=8, show_default=True)
@click.option("--failover/--no-failover", default=True, show_default=True)
@click.option(
    "--ttl-s",
    type=click.FloatRange(0.5, 60),
    default=3.0,
    show_default=True,
    help="The coordinator's node TTL for this run (DEPIN_NODE_TTL_S).",
)
@click.option(
    "--grace-s",
    type=click.FloatRange(0, 60),
    default=2.0,
    show_default=True,
    help="The coordinator's node grace for this run (DEPIN_NODE_GRACE_S).",
)
@click.option(
    "--heartbeat-interval-s", type=click.FloatRange(0.1, 60), default=1.0, show_default=True
)
@json_option
def bench_lifecycle(as_json: bool, **options: Any) -> None:
    """A live `depin serve` and node agents: submit to running, failover, jobs/s."""
    from depin.bench.lifecycle import run

    say = None if as_json else (lambda msg: click.echo(f"... {msg}", err=True))
    data = run(progress=say, **options)
    _emit(as_json, data, lambda: _print_lifecycle_bench(data))


def _print_lifecycle_bench(data: dict[str, Any]) -> None:
    s = data["settings"]
    table = Table(
        "jobs",
        "n",
        "ok",
        "market p50",
        "market p99",
        "client p50",
        "client p99",
        "reserve p50",
        "dispatch p50",
        title=(
            f"submit -> running, ms ({s['agents']} agents x {s['gpus_per_agent']} GPUs; "
            "market: job created -> agent's acceptance; client: before submit -> seen running)"
        ),
    )
    rows = [("idle capacity, one at a time", data["idle_capacity"])]
    rows += [(f"under load: {k.replace('_', ' ')}", v) for k, v in data["under_load"].items()]
    for name, r in rows:
        if not isinstance(r, dict) or "market_ms" not in r:
            continue
        table.add_row(
            name,
            str(r["jobs"]),
            str(r["succeeded"]),
            *(
                str(r[f"{clock}_ms"][q])
                for clock, q in (
                    ("market", "p50"),
                    ("market", "p99"),
                    ("client", "p50"),
                    ("client", "p99"),
                    ("reserve", "p50"),
                    ("dispatch", "p50"),
                )
            ),
        )
    console.print(table)
    u = data["under_load"]
    console.print(
        f"under load: {u['long_jobs']} jobs of {u['long_job_s']:g} s every "
        f"{u['arrival_interval_s']} s confined to {u['busy_region_gpus']} GPUs: "
        f"{u['busy_region_throughput']['jobs_per_s']} finished per s "
        f"(at most {u['busy_region_throughput']['ideal_jobs_per_s']:g})"
    )
    t = data["throughput"]
    console.print(
        f"throughput: {t['succeeded']} of {t['jobs']} jobs succeeded from {t['submitters']} "
        f"threads in {t['all_settled_in_s']} s -> [bold]{t['jobs_per_s']} jobs/s[/bold] "
        f"submit -> run -> settled ({t['submissions_per_s']} submissions/s)"
    )
    f = data["failover"]
    if "skipped" in f:
        console.print(f"failover: skipped ({f['skipped']})")
    elif not f["completed"]:
        console.print(f"[red]failover: did not complete: {f['error']}[/red]")
    else:
        console.print(
            f"failover after SIGKILL of node {f['killed_node']}'s agent: running on node "
            f"{f['new_node']} after [bold]{f['market_s']} s[/bold] (client {f['client_s']} s; "
            f"declared lost {f['declared_lost_after_s']} s, reserved again "
            f"{f['reserved_again_after_s']} s; silent {f['silent_before_kill_s']} s before the "
            f"kill) against TTL {s['node_ttl_s']:g} + grace "
            f"{s['node_grace_s']:g} + 2 = {f['budget_s']:g} s"
        )
    table = Table("target", "figure", "target", "ratio", "met", title="targets")
    for name, r in data["targets"].items():
        met = "[green]yes[/green]" if r["met"] else "[red]no[/red]"
        table.add_row(name, str(r["figure"]), f"{r['target']:g}", str(r["ratio"]), met)
    console.print(table)
    j = data["jobs"]
    console.print(
        f"jobs: {j['succeeded']} of {j['submitted']} succeeded ({j['states']}), throughput "
        f"{j['throughput']['succeeded']} of {j['throughput']['submitted']}; "
        f"ledger ok: {data['ledger_ok']}; {data['elapsed_s']} s in all"
    )
