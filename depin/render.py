"""Rich tables and lines for people: what the CLI and the demo print.

Every function takes the data a command already has (views, dicts as
``--json`` prints them) and a console; none reads or changes the market.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click
from rich.console import Console
from rich.table import Table

from depin.errors import InputError
from depin.ledger import Balance
from depin.money import format_usd
from depin.views import AllocationView, EntryView, ExplainView, JobView, KeyView, NodeView
from scheduler.search import Hit

console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)


def emit(as_json: bool, data: Any, render: Callable[[], None]) -> None:
    """Print ``data`` as JSON for machines, or call ``render`` for people."""
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        render()


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _near(lat: float, lon: float) -> str:
    from providers.fleet import nearest_city  # loads the city table only when printing

    return nearest_city(lat, lon)


def balance_dict(b: Balance) -> dict[str, Any]:
    """A balance as ``--json`` prints it."""
    return {
        "account": b.account,
        "kind": b.kind,
        "available_micro_usd": b.available,
        "held_micro_usd": b.debits_pending,
        "spent_micro_usd": b.debits_posted,
        "received_micro_usd": b.credits_posted,
    }


def balances_table(balances: Iterable[Balance], *, title: str | None = None) -> Table:
    """Each account's available, held, spent and received money."""
    table = Table("account", "kind", "available", "held", "spent", "received", title=title)
    table.title_justify = "left"
    for b in balances:
        table.add_row(
            b.account,
            b.kind,
            format_usd(b.available),
            format_usd(b.debits_pending),
            format_usd(b.debits_posted),
            format_usd(b.credits_posted),
        )
    return table


def gpus(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("model", "kind", "memory GiB", "FP16 TFLOPS", "INT8 TOPS", "power W")
    for r in rows:
        table.add_row(
            r["name"],
            r["kind"],
            f"{r['memory_gib']:g}",
            _num(r["fp16_tflops"]),
            _num(r["int8_tops"]),
            f"{r['power_w']:g}",
        )
    console.print(table)


def registered_keys(console: Console, keys: list[KeyView]) -> None:
    table = Table("key id", "state", "created", "expires", "revoked")
    for k in keys:
        table.add_row(
            k.key_id, k.state, k.created_at or "-", k.not_after or "-", k.revoked_at or "-"
        )
    console.print(table)


def local_keys(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table("name", "key id", "public key")
    for r in rows:
        table.add_row(r["name"], r["key_id"], r["public_key"])
    console.print(table)


def nodes(console: Console, views: list[NodeView]) -> None:
    table = Table(
        "id",
        "provider",
        "gpu",
        "free/gpus",
        "vram GiB",
        "$/GPU-h",
        "near",
        "tier",
        "region",
        "net",
        "reliability",
        "agent",
        "status",
    )
    for v in views:
        table.add_row(
            str(v.id),
            v.provider,
            v.gpu_model,
            f"{v.gpus_free}/{v.gpus}",
            f"{v.vram_gib:g}",
            f"{v.price_usd_per_gpu_hour:.2f}",
            _near(v.lat, v.lon),
            v.tier,
            v.region,
            v.network,
            f"{v.reliability:.3f}",
            (v.agent or "-") + (" (simulated GPUs)" if v.simulated else ""),
            v.status,
        )
    console.print(table)


def hit_dict(h: Hit) -> dict[str, Any]:
    """A search hit as ``depin offers --json`` prints it."""
    return {
        "node_id": h.offer.node_id,
        "gpu_model": h.offer.gpu_model,
        "gpus_free": h.gpus_free,
        "vram_gib": h.offer.vram_gib,
        "price_usd_per_gpu_hour": h.offer.price_usd_per_gpu_hour,
        "rtt_ms": None if h.rtt_ms is None else round(h.rtt_ms, 2),
        "score": round(h.score, 2),
        "tier": h.offer.tier,
        "region": h.offer.region,
        "network": h.offer.network,
        "lat": h.offer.lat,
        "lon": h.offer.lon,
        "reliability": h.offer.reliability,
    }


def offers(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(
        "node", "gpu", "free", "vram GiB", "$/GPU-h", "rtt ms", "score", "near", "tier", "region",
        "net",
    )  # fmt: skip
    for r in rows:
        table.add_row(
            str(r["node_id"]),
            r["gpu_model"],
            str(r["gpus_free"]),
            f"{r['vram_gib']:g}",
            f"{r['price_usd_per_gpu_hour']:.2f}",
            "-" if r["rtt_ms"] is None else f"{r['rtt_ms']:.1f}",
            f"{r['score']:.1f}",
            _near(r["lat"], r["lon"]),
            r["tier"],
            r["region"],
            r["network"],
        )
    console.print(table)


def allocations(console: Console, views: list[AllocationView]) -> None:
    table = Table("id", "job", "gpus", "$/GPU-h", "state", "started", "ended", "cost", "exit")
    for a in views:
        table.add_row(
            str(a.id),
            str(a.job_id),
            str(a.gpus),
            f"{a.price_usd_per_gpu_hour:.2f}",
            a.state,
            a.started_at or "-",
            a.ended_at or "-",
            format_usd(a.cost_micro_usd) if a.cost_micro_usd is not None else "-",
            str(a.exit_code) if a.exit_code is not None else "-",
        )
    console.print(table)


def job_table(console: Console, views: list[JobView]) -> None:
    table = Table("id", "name", "account", "state", "node", "rtt ms", "$/GPU-h", "cost", "exit")
    for v in views:
        a = v.allocation
        table.add_row(
            str(v.id),
            v.name,
            v.account,
            v.state,
            str(a.node_id) if a else "-",
            f"{a.rtt_ms:.1f}" if a and a.rtt_ms is not None else "-",
            f"{a.price_usd_per_gpu_hour:.2f}" if a else "-",
            format_usd(a.cost_micro_usd) if a and a.cost_micro_usd is not None else "-",
            str(a.exit_code) if a and a.exit_code is not None else "-",
        )
    console.print(table)


def job(console: Console, v: JobView) -> None:
    console.print(
        f"[bold]job {v.id}[/bold] {v.name}  state: [bold]{v.state}[/bold]  account: {v.account}"
    )
    console.print(f"  manifest {v.manifest_digest}  signed by key {v.key_id}")
    console.print(f"  most it can cost: {format_usd(v.max_cost_micro_usd)}")
    for a in v.allocations:
        rtt = f"{a.rtt_ms:.1f} ms" if a.rtt_ms is not None else "-"
        console.print(
            f"  allocation {a.id}: node {a.node_id}, {a.gpus} GPU(s) at "
            f"${a.price_usd_per_gpu_hour:.2f}/GPU-h, "
            f"rtt {rtt}, {a.state}"
            + (f", exit {a.exit_code}" if a.exit_code is not None else "")
            + (f", cost {format_usd(a.cost_micro_usd)}" if a.cost_micro_usd is not None else "")
        )
        if a.error:
            console.print(f"    error: {a.error}", markup=False)
        if a.dispute:
            console.print(f"    dispute: {a.dispute}", markup=False)
        if a.output_tail:
            console.print("    output (tail):")
            for line in a.output_tail.rstrip().splitlines()[-10:]:
                console.print(f"      {line}", markup=False)
    for reason in v.reasons:
        console.print(f"  reason: {reason}", markup=False)


def ending(view: JobView) -> str:
    """One line for a job that did not succeed (or did not end in time)."""
    if not view.terminal:
        return f"job {view.id} is still {view.state} after the timeout"
    alloc = view.allocation
    detail = "; ".join(view.reasons)
    if alloc is not None and view.state == "failed":
        detail = alloc.error or f"exit code {alloc.exit_code}"
    return f"job {view.id} {view.state}: {detail}"


def explain(console: Console, data: ExplainView) -> None:
    m = data.metric
    where = (
        f"node{'s' if len(data.node_ids) > 1 else ''} {', '.join(map(str, data.node_ids))}"
        if data.node_ids
        else "no node"
    )
    console.print(f"[bold]job {data.job}[/bold] {data.name}: {data.state}, {where} ({data.source})")
    console.print(  # records written before codes and offline counts lack them
        f"  nodes evaluated: {m['nodes_evaluated']}, feasible: {m['feasible']}, "
        f"busy: {m['exhausted']}, offline: {m.get('offline', 0)}"
        + (f" ({m['code']})" if m.get("code") else "")
    )
    for label, count in sorted(m["filtered"].items(), key=lambda kv: -kv[1]):
        console.print(f"  filtered by {label}: {count} node(s)", markup=False)
    if m["candidates"]:
        table = Table("node", "total", "cost", "latency", "reliability", "rtt ms", "$/GPU-h")
        for c in m["candidates"]:
            s = c["scores"]
            table.add_row(
                str(c["node_id"]),
                f"{c['total']:.1f}",
                f"{s['cost']:.1f}",
                f"{s['latency']:.1f}",
                f"{s['reliability']:.1f}",
                "-" if c["rtt_ms"] is None else f"{c['rtt_ms']:.1f}",
                f"{c['price_usd_per_gpu_hour']:.2f}",
            )
        console.print(table)
    for reason in data.reasons:
        console.print(f"  reason: {reason}", markup=False)
    for suggestion in m.get("suggestions", []):
        if suggestion not in data.reasons:
            console.print(f"  suggestion: {suggestion}", markup=False)


def ledger(console: Console, balances: list[Balance], entries: list[EntryView]) -> None:
    console.print(balances_table(balances))
    table = Table("#", "kind", "debit", "credit", "amount", "pending", "job", "memo")
    for e in entries:
        table.add_row(
            str(e.id),
            e.kind,
            e.debit,
            e.credit,
            format_usd(e.amount_micro_usd),
            "yes" if e.pending else "",
            str(e.job_id or ""),
            e.memo,
        )
    console.print(table)


@contextmanager
def writing(path: Path | None) -> Iterator[TextIO]:
    """``path`` open for writing (stdout when None), written whole or not at all: the output
    goes to a file beside it that replaces it only when the command succeeds, so a failed
    export leaves an earlier one as it was. A failure to write (no such directory, a full
    disk) is one line naming the file."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(f".{path.name}.partial")
    try:
        try:
            with partial.open("w", encoding="utf-8") as stream:
                yield stream
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def cycle_logger(summary: dict[str, int], as_json: bool) -> Any:
    """What a cycle did: added to ``summary``, and one line per event on stderr."""

    def log(report: Any) -> None:
        summary["placed"] += len(report.commit.reserved)
        summary["unschedulable"] += len(report.commit.unschedulable)
        summary["conflicts"] += report.commit.conflicts
        for outcome in report.finished:
            summary["succeeded" if outcome.succeeded else "failed"] += 1
        if as_json:
            return
        if report.requeued:
            click.echo(f"requeued {len(report.requeued)} allocation(s) given up on", err=True)
        if report.commit.reserved:
            click.echo(f"reserved {len(report.commit.reserved)} allocation(s)", err=True)
        for job_id in report.commit.unschedulable:
            click.echo(f"job {job_id}: unschedulable", err=True)
        for outcome in report.finished:
            state = "succeeded" if outcome.succeeded else ("lost" if outcome.lost else "failed")
            click.echo(f"allocation {outcome.allocation_id}: {state}", err=True)
        for error in report.errors:
            click.echo(f"not settled: {error}", err=True)

    return log
