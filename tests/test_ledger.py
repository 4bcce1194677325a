"""The ledger: double entry in micro-USD, holds resolved once, no overdraft, a hash chain."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text

from depin.config import Settings
from depin.db.engine import run_transaction
from depin.db.models import Account
from depin.errors import InsufficientFundsError, LedgerError
from depin.ledger import ESCROW_ACCOUNT, WORLD_ACCOUNT, Entry, Ledger, verify
from depin.market import Marketplace


@pytest.fixture
def market(database_url: str, home) -> Iterator[Marketplace]:  # type: ignore[no-untyped-def]
    m = Marketplace(Settings.from_env(home=home, database_url=database_url))
    yield m
    m.close()


def open_developer(market: Marketplace, name: str = "dev") -> int:
    def work(s) -> int:  # type: ignore[no-untyped-def]
        acct = Account(name=name, kind="developer", must_not_overdraw=True)
        s.add(acct)
        s.flush()
        return acct.id

    return run_transaction(market.sessions, work)


def ids(market: Marketplace) -> tuple[int, int]:
    def work(s) -> tuple[int, int]:  # type: ignore[no-untyped-def]
        ledger = Ledger(s)
        return ledger.account(WORLD_ACCOUNT).id, ledger.account(ESCROW_ACCOUNT).id

    return run_transaction(market.sessions, work)


def tx(market: Marketplace, fn):  # type: ignore[no-untyped-def]
    return run_transaction(market.sessions, lambda s: fn(Ledger(s)))


def assert_balanced(market: Marketplace) -> None:
    report = run_transaction(market.sessions, verify)
    assert report.ok, report.problems


def test_a_deposit_credits_the_developer_and_debits_the_world(market: Marketplace) -> None:
    dev = open_developer(market)
    world, _ = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 5_000_000, "deposit"))
    balance = tx(market, lambda lg: lg.balance(dev))
    assert (balance.credits_posted, balance.available) == (5_000_000, 5_000_000)
    assert_balanced(market)


def test_a_hold_reserves_money_and_a_partial_post_returns_the_rest(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 10_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 4_000_000, "hold", pending=True))
    assert tx(market, lambda lg: lg.balance(dev)).available == 6_000_000
    assert_balanced(market)
    tx(market, lambda lg: lg.post(lg.pending_transfer(hold), 1_500_000))
    after = tx(market, lambda lg: lg.balance(dev))
    assert (after.available, after.debits_pending, after.debits_posted) == (8_500_000, 0, 1_500_000)
    assert tx(market, lambda lg: lg.balance(escrow)).credits_posted == 1_500_000
    assert_balanced(market)


def test_a_void_returns_the_whole_hold(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 3_000_000, "hold", pending=True))
    tx(market, lambda lg: lg.void(lg.pending_transfer(hold)))
    assert tx(market, lambda lg: lg.balance(dev)).available == 3_000_000
    assert_balanced(market)


def test_a_hold_is_resolved_at_most_once(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 1_000_000, "hold", pending=True))
    tx(market, lambda lg: lg.post(lg.pending_transfer(hold)))
    with pytest.raises(LedgerError, match="already resolved"):
        tx(market, lambda lg: lg.void(lg.pending_transfer(hold)))
    assert_balanced(market)


def test_an_adjusted_hold_is_resolved_and_replaced_by_one_entry(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 5_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 4_000_000, "hold", pending=True))
    smaller = tx(market, lambda lg: lg.adjust(lg.pending_transfer(hold), 1_000_000))
    assert smaller == hold + 1
    assert tx(market, lambda lg: lg.balance(dev)).available == 4_000_000
    with pytest.raises(LedgerError, match="already resolved"):
        tx(market, lambda lg: lg.void(lg.pending_transfer(hold)))
    # The new hold is an open hold like any other: adjust it up, then post part of it.
    larger = tx(market, lambda lg: lg.adjust(lg.pending_transfer(smaller), 2_500_000))
    assert tx(market, lambda lg: lg.balance(dev)).available == 2_500_000
    tx(market, lambda lg: lg.post(lg.pending_transfer(larger), 500_000))
    after = tx(market, lambda lg: lg.balance(dev))
    assert (after.available, after.debits_pending, after.debits_posted) == (4_500_000, 0, 500_000)
    assert_balanced(market)


def test_adjusting_a_hold_up_needs_the_difference_available(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 2_000_000, "hold", pending=True))
    with pytest.raises(InsufficientFundsError, match=r"has \$1.00 available, \$1.50 needed"):
        tx(market, lambda lg: lg.adjust(lg.pending_transfer(hold), 3_500_000))
    with pytest.raises(LedgerError, match="cannot adjust"):
        tx(market, lambda lg: lg.adjust(lg.pending_transfer(hold), -1))
    tx(market, lambda lg: lg.adjust(lg.pending_transfer(hold), 3_000_000))
    assert tx(market, lambda lg: lg.balance(dev)).available == 0
    assert_balanced(market)


def test_a_developer_cannot_overdraw_and_nothing_is_written(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 1_000_000, "deposit"))
    with pytest.raises(InsufficientFundsError, match=r"has \$1.00 available, \$2.00 needed"):
        tx(market, lambda lg: lg.transfer(dev, escrow, 2_000_000, "hold", pending=True))
    report = run_transaction(market.sessions, verify)
    assert report.ok and report.entries == 1


def test_the_database_refuses_an_overdraft_the_code_did_not_see(market: Marketplace) -> None:
    dev = open_developer(market)
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError), market.engine.begin() as conn:
        conn.execute(text("UPDATE accounts SET debits_posted = 1 WHERE id = :id"), {"id": dev})


def test_posting_more_than_the_hold_is_refused(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 1_000_000, "hold", pending=True))
    with pytest.raises(LedgerError, match="cannot post"):
        tx(market, lambda lg: lg.post(lg.pending_transfer(hold), 1_000_001))


def _three_entries(market: Marketplace) -> None:
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    tx(market, lambda lg: lg.transfer(world, dev, 2_000_000, "deposit"))
    tx(market, lambda lg: lg.transfer(dev, escrow, 1_000_000, "hold", pending=True))


def test_a_changed_entry_is_found_at_its_position(market: Marketplace) -> None:
    _three_entries(market)
    with market.engine.begin() as conn:
        conn.execute(text("UPDATE transfers SET amount_micro_usd = 9000000 WHERE id = 2"))
        conn.execute(
            text("UPDATE accounts SET credits_posted = credits_posted + 7000000 WHERE name = 'dev'")
        )
        conn.execute(
            text(
                "UPDATE accounts SET debits_posted = debits_posted + 7000000 WHERE name = '@world'"
            )
        )
    report = run_transaction(market.sessions, verify)
    assert report.first_bad_position == 2
    assert "entry #2 was changed" in report.problems[0]


def test_a_removed_entry_is_found_at_its_position(market: Marketplace) -> None:
    _three_entries(market)
    with market.engine.begin() as conn:
        conn.execute(text("DELETE FROM transfers WHERE id = 2"))
    report = run_transaction(market.sessions, verify)
    assert report.first_bad_position == 2
    assert "entry #2 is missing" in report.problems[0]


def test_an_inserted_entry_is_found_at_its_position(market: Marketplace) -> None:
    _three_entries(market)
    with market.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount_micro_usd, "
                "kind, pending, memo, created_at, prev_hash, hash) SELECT 4, debit_account_id, "
                "credit_account_id, 1, kind, pending, memo, created_at, prev_hash, hash "
                "FROM transfers WHERE id = 3"
            )
        )
    report = run_transaction(market.sessions, verify)
    assert report.first_bad_position == 4
    assert "entry #4 does not link" in report.problems[0]


def test_removing_the_last_entry_is_found(market: Marketplace) -> None:
    _three_entries(market)
    with market.engine.begin() as conn:
        conn.execute(text("DELETE FROM transfers WHERE id = 3"))
    report = run_transaction(market.sessions, verify)
    assert not report.ok
    assert report.first_bad_position == 3


# -- what append asserts before it writes ---------------------------------------------------


def _deposit_and_hold(market: Marketplace) -> tuple[int, int, int]:
    """A developer with 3 USD deposited and 1 USD of it held: (developer, escrow, hold)."""
    dev = open_developer(market)
    world, escrow = ids(market)
    tx(market, lambda lg: lg.transfer(world, dev, 3_000_000, "deposit"))
    hold = tx(market, lambda lg: lg.transfer(dev, escrow, 1_000_000, "hold", pending=True))
    return dev, escrow, hold


def entry_count(market: Marketplace) -> int:
    report = run_transaction(market.sessions, verify)
    assert report.ok, report.problems
    return report.entries


@pytest.mark.parametrize("amount", [-1, 2.5])
def test_an_amount_that_is_not_a_non_negative_int_is_refused_before_writing(
    market: Marketplace, amount: float
) -> None:
    dev = open_developer(market)
    world, _ = ids(market)
    with pytest.raises(LedgerError, match=r"^entry #1 \(deposit\) has amount "):
        tx(market, lambda lg: lg.append([Entry("deposit", world, dev, amount)]))  # type: ignore[arg-type]
    assert entry_count(market) == 0


@pytest.mark.parametrize(
    ("kind", "pending", "resolves"),
    [
        ("hold", False, False),
        ("hold", True, True),
        ("adjust", False, True),
        ("adjust", True, False),
        ("post", True, True),
        ("post", False, False),
        ("void", True, True),
        ("void", False, False),
        ("deposit", True, False),
        ("payout", False, True),
    ],
)
def test_an_entry_whose_pending_flag_or_hold_does_not_fit_its_kind_is_refused(
    market: Marketplace, kind: str, pending: bool, resolves: bool
) -> None:
    dev, escrow, hold_id = _deposit_and_hold(market)

    def work(lg: Ledger) -> list[int]:
        hold = lg.pending_transfer(hold_id) if resolves else None
        return lg.append([Entry(kind, dev, escrow, 1_000_000, pending, hold)])

    with pytest.raises(LedgerError, match=rf"^entry #3 \({kind}\) "):
        tx(market, work)
    assert entry_count(market) == 2


def test_appending_a_post_above_its_hold_is_refused(market: Marketplace) -> None:
    _, _, hold_id = _deposit_and_hold(market)

    def work(lg: Ledger) -> list[int]:
        return lg.append([Ledger.resolution(lg.pending_transfer(hold_id), "post", 1_000_001)])

    refused = rf"^entry #3 posts 1000001 of hold #{hold_id} for 1000000$"
    with pytest.raises(LedgerError, match=refused):
        tx(market, work)
    assert entry_count(market) == 2


def test_appending_a_void_of_less_than_its_whole_hold_is_refused(market: Marketplace) -> None:
    _, _, hold_id = _deposit_and_hold(market)

    def work(lg: Ledger) -> list[int]:
        return lg.append([Ledger.resolution(lg.pending_transfer(hold_id), "void", 400_000)])

    refused = rf"^entry #3 voids 400000 of hold #{hold_id} for 1000000$"
    with pytest.raises(LedgerError, match=refused):
        tx(market, work)
    assert entry_count(market) == 2


def test_appending_from_a_chain_head_that_moved_since_it_was_read_is_refused(
    market: Marketplace,
) -> None:
    dev = open_developer(market)
    world, _ = ids(market)

    def work(s) -> int:  # type: ignore[no-untyped-def]
        stale = Ledger(s)
        stale.lock()
        s.expunge_all()  # as verify does between pages: the next Ledger reads the head afresh
        Ledger(s).transfer(world, dev, 1_000_000, "deposit")
        return stale.transfer(world, dev, 2_000_000, "deposit")

    with pytest.raises(LedgerError, match=r"^cannot append entry #1: the chain head is at #1"):
        run_transaction(market.sessions, work)
    assert entry_count(market) == 0


def test_the_chain_head_advances_with_its_entries_even_if_the_session_forgets_it(
    market: Marketplace,
) -> None:
    dev = open_developer(market)
    world, _ = ids(market)

    def work(s) -> None:  # type: ignore[no-untyped-def]
        ledger = Ledger(s)
        ledger.transfer(world, dev, 1_000_000, "deposit")
        s.expunge_all()  # the head row, if only changed in the session, is forgotten here
        ledger.transfer(world, dev, 2_000_000, "deposit")

    run_transaction(market.sessions, work)
    assert entry_count(market) == 2
