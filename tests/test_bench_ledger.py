"""``depin bench ledger`` compares like with like: both sides commit through the same call,
each allocation with a plan record of its own, and only the commit is timed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli import cli
from depin.bench import ledger


@pytest.fixture(scope="module")
def figures() -> dict[str, Any]:
    return ledger.run(allocations=120, cycle=50, baseline=15)


def test_each_side_writes_one_plan_record_per_allocation(figures: dict[str, Any]) -> None:
    for side in ("batched", "one_per_transaction"):
        assert figures[side]["plan_records"] == figures[side]["allocations"] > 0


def test_the_batched_side_commits_a_cycle_per_transaction(figures: dict[str, Any]) -> None:
    assert figures["batched"]["allocations"] == figures["allocations"] == 120
    assert figures["batched"]["transactions"] == 3  # 50 + 50 + 20


def test_the_baseline_commits_one_allocation_per_transaction(figures: dict[str, Any]) -> None:
    baseline = figures["one_per_transaction"]
    assert baseline["transactions"] == baseline["allocations"] == 15


def test_the_ledger_verifies_after_both_sides(figures: dict[str, Any]) -> None:
    assert figures["ledger_ok"] is True and figures["problems"] == []
    assert figures["database"] == "sqlite, a fresh file"


def test_the_command_says_what_each_side_wrote() -> None:
    result = CliRunner().invoke(
        cli, ["bench", "ledger", "--allocations", "100", "--cycle", "40"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert "plan records written: batched 100 for 100 allocations in 3 transactions" in (
        result.stdout
    )


def test_a_sqlite_db_is_appended_to_and_the_figures_say_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    args = ["bench", "ledger", "--allocations", "100", "--cycle", "100", "--db", url, "--json"]
    first = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).stdout)
    second = json.loads(CliRunner().invoke(cli, args, catch_exceptions=False).stdout)
    assert first["database"] == f"sqlite, appending to {url} (its rows stay)"
    assert second["ledger_entries"] > first["ledger_entries"]  # the first run's rows stayed
