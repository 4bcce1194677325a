"""Rich tables shared by the CLI and the demo."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table

from depin.ledger import Balance
from depin.money import format_usd


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
