"""The house rules on structure: layers hold, the planner stays pure, the CLI only calls Client,
and the modules that were split stay small."""

from __future__ import annotations

import ast
import inspect
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What cli.py may not import itself (it reaches the market only through depin.Client).
CLI_FORBIDDEN = (
    "depin.market",
    "depin.db",
    "depin.submission",
    "depin.reserve",
    "depin.settlement",
    "depin.runtime",
    "sqlalchemy",
    "ray",
)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint is not None, "import-linter is a dev dependency: `make install`"
    result = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout[-4000:]
    assert "0 broken" in result.stdout


def test_the_cli_imports_no_market_internals() -> None:
    imported = _imports(ROOT / "cli.py")
    wrong = sorted(m for m in imported if m.startswith(CLI_FORBIDDEN))
    assert wrong == []


def test_nothing_below_the_cli_imports_it() -> None:
    for package in ("depin", "scheduler", "providers"):
        for path in (ROOT / package).rglob("*.py"):
            assert "cli" not in _imports(path), path


@pytest.mark.parametrize(("path", "most"), [("depin/market.py", 500), ("cli.py", 700)])
def test_the_facades_stay_small(path: str, most: int) -> None:
    assert len((ROOT / path).read_text().splitlines()) <= most


def _conforms(cls: type, protocol: type) -> None:
    """Every method of ``protocol`` on ``cls``, with the same parameters, kinds and defaults."""
    for name, wanted in inspect.getmembers(protocol, inspect.isfunction):
        if name.startswith("_"):
            continue
        assert hasattr(cls, name), f"{cls.__name__} lacks {name}"
        have = inspect.signature(getattr(cls, name)).parameters
        for param in inspect.signature(wanted).parameters.values():
            assert param.name in have, f"{cls.__name__}.{name} lacks {param.name}"
            assert have[param.name].kind == param.kind, f"{cls.__name__}.{name}({param.name})"
            assert have[param.name].default == param.default, f"{cls.__name__}.{name}({param.name})"


def test_the_marketplace_implements_the_sdks_market_protocol(sqlite_client: object) -> None:
    from depin.market import Marketplace
    from depin.protocol import Market

    market = sqlite_client.market  # type: ignore[attr-defined]
    assert isinstance(market, Marketplace) and isinstance(market, Market)
    _conforms(Marketplace, Market)


def test_the_http_market_implements_the_sdks_market_protocol() -> None:
    from depin.api.remote import HttpMarket
    from depin.protocol import Market

    _conforms(HttpMarket, Market)


def test_the_marketplace_gives_the_driver_what_it_calls() -> None:
    from depin.market import Marketplace
    from depin.runtime.loop import CycleMarket

    _conforms(Marketplace, CycleMarket)
