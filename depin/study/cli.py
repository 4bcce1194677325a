"""``depin study``: studies on real geography with depin's own scheduler."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from depin.render import console


@click.group()
def study() -> None:
    """Studies on real geography with depin's own scheduler."""


@study.command("edge")
@click.option("--cities", type=click.IntRange(20, 20_000), default=1000, show_default=True)
@click.option("--requests", type=click.IntRange(100, 500_000), default=20_000, show_default=True)
@click.option("--seed", type=int, default=7, show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write a Markdown report with its plots (PNG) into this directory.",
)
@click.option("--no-sensitivity", is_flag=True, help="Skip the one-knob-at-a-time runs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def edge(
    cities: int, requests: int, seed: int, out: Path | None, no_sensitivity: bool, as_json: bool
) -> None:
    """Does the edge deliver? Latency-critical requests from real cities, served by the
    cloud, by the nearest edge site, and by depin's scheduler: RTT, SLOs and cost."""
    from depin.study import edge as model

    started = time.perf_counter()
    a = model.Assumptions(cities=cities, requests=requests, seed=seed)
    result = model.run(a, with_caps=out is not None)
    sens = [] if no_sensitivity else model.sensitivity(a)
    data = model.summary(result, sens)
    if out is not None:
        from depin.study import report

        data["report"] = [str(p) for p in report.write(result, data, out)]
    data["seconds"] = round(time.perf_counter() - started, 1)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    _print(data)


def _print(data: dict[str, Any]) -> None:
    from depin.study import report

    console.print(report.headline(data), markup=False)
    console.print(f"goal: {report.goal_line(data['goal'])}", markup=False)
    for name, claim in data["claims"].items():
        console.print(f"claim {name}: {json.dumps(claim)}", markup=False)
    if "report" in data:
        console.print(f"report: {data['report'][0]}", markup=False)
    console.print(f"{data['seconds']} s", markup=False)
