"""`ledger verify` finds entries that Ledger would have refused, written past it into the chain."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from depin.config import Settings
from depin.db.engine import db_time, run_transaction
from depin.db.models import Account, Transfer, utcnow
from depin.ledger import ESCROW_ACCOUNT, WORLD_ACCOUNT, Ledger, entry_hash, entry_values, verify
from depin.market import Marketplace

HELD_MICRO = 500


@pytest.fixture
def market(database_url: str, home) -> Iterator[Marketplace]:  # type: ignore[no-untyped-def]
    m = Marketplace(Settings.from_env(home=home, database_url=database_url))
    yield m
    m.close()


def open_hold(market: Marketplace) -> tuple[int, int, int]:
    """A developer with 1 USD deposited and HELD_MICRO of it held: (developer, escrow, hold)."""

    def work(s: Session) -> tuple[int, int, int]:
        dev = Account(name="dev", kind="developer", must_not_overdraw=True)
        s.add(dev)
        s.flush()
        ledger = Ledger(s)
        world, escrow = ledger.account(WORLD_ACCOUNT).id, ledger.account(ESCROW_ACCOUNT).id
        ledger.transfer(world, dev.id, 1_000_000, "deposit")
        return dev.id, escrow, ledger.transfer(dev.id, escrow, HELD_MICRO, "hold", pending=True)

    return run_transaction(market.sessions, work)


def append_unchecked(
    market: Marketplace,
    entry: Transfer,
    *,
    pending_delta: int,
    posted_delta: int,
) -> int:
    """Write ``entry`` as a faulty writer would, past Ledger's checks, yet chained by hash,
    counted by the head and applied to both accounts (their debits and credits move by the
    deltas), so that only a check of the entry itself can find it. Returns its id."""

    def work(s: Session) -> int:
        seq, prev = s.execute(text("SELECT seq, hash FROM ledger_head WHERE id = 1")).one()
        entry.id, entry.created_at, entry.memo = seq + 1, utcnow(), ""
        digest = entry_hash(prev, entry_values(entry))
        s.execute(
            text(
                "INSERT INTO transfers (id, debit_account_id, credit_account_id, "
                "amount_micro_usd, kind, pending, pending_id, memo, created_at, prev_hash, hash) "
                "VALUES (:id, :debit, :credit, :amount, :kind, :pending, :pending_id, '', "
                ":created_at, :prev, :hash)"
            ),
            {
                "id": entry.id,
                "debit": entry.debit_account_id,
                "credit": entry.credit_account_id,
                "amount": entry.amount_micro_usd,
                "kind": entry.kind,
                "pending": entry.pending,
                "pending_id": entry.pending_id,
                "created_at": db_time(s, entry.created_at),
                "prev": prev,
                "hash": digest,
            },
        )
        s.execute(
            text("UPDATE ledger_head SET seq = :seq, hash = :hash WHERE id = 1"),
            {"seq": entry.id, "hash": digest},
        )
        for side, account_id in (
            ("debits", entry.debit_account_id),
            ("credits", entry.credit_account_id),
        ):
            s.execute(
                text(
                    f"UPDATE accounts SET {side}_pending = {side}_pending + :pending, "
                    f"{side}_posted = {side}_posted + :posted WHERE id = :id"
                ),
                {"pending": pending_delta, "posted": posted_delta, "id": account_id},
            )
        return entry.id

    return run_transaction(market.sessions, work)


def test_verify_reports_a_post_above_the_hold_it_resolves(market: Marketplace) -> None:
    dev, escrow, hold = open_hold(market)
    post = Transfer(
        debit_account_id=dev,
        credit_account_id=escrow,
        amount_micro_usd=900,
        kind="post",
        pending=False,
        pending_id=hold,
    )
    bad = append_unchecked(market, post, pending_delta=-HELD_MICRO, posted_delta=900)
    report = run_transaction(market.sessions, verify)
    assert report.problems == [f"entry #{bad} posts 900 of hold #{hold} for {HELD_MICRO}"]
    assert report.first_bad_position == bad


def test_verify_reports_an_entry_of_another_kind_that_resolves_a_hold(
    market: Marketplace,
) -> None:
    dev, escrow, hold = open_hold(market)
    payout = Transfer(
        debit_account_id=dev,
        credit_account_id=escrow,
        amount_micro_usd=HELD_MICRO,
        kind="payout",
        pending=False,
        pending_id=hold,
    )
    bad = append_unchecked(market, payout, pending_delta=-HELD_MICRO, posted_delta=0)
    report = run_transaction(market.sessions, verify)
    assert report.problems == [
        f"entry #{bad} (payout) resolves hold #{hold}: only adjust, post, void entries do"
    ]
    assert report.first_bad_position == bad
