"""The ledger as a state machine (hypothesis): deposits, holds, posts, voids, adjustments,
timeouts, retries.

After every step the database agrees with a plain-Python model, debits equal
credits (pending and posted), no developer is overdrawn, and ``verify`` finds
the hash chain intact.
"""

from __future__ import annotations

import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from depin.config import Settings
from depin.db.engine import run_transaction
from depin.db.models import Account
from depin.errors import ConflictError, InsufficientFundsError, LedgerError
from depin.ledger import ESCROW_ACCOUNT, Ledger, balances, verify
from depin.market import Marketplace

DEVELOPERS = ("ann", "bob")
Totals = list[int]  # debits pending, debits posted, credits pending, credits posted


class LedgerMachine(RuleBasedStateMachine):
    holds = Bundle("holds")
    resolved = Bundle("resolved")

    def __init__(self) -> None:
        super().__init__()
        self.home = Path(tempfile.mkdtemp(prefix="depin-stateful-"))
        self.market = Marketplace(Settings.from_env(home=self.home))
        self.ids: dict[str, int] = {}
        for name in DEVELOPERS:
            self.ids[name] = run_transaction(self.market.sessions, lambda s, n=name: _open(s, n))
        self.ids["@world"], self.ids["@escrow"] = run_transaction(
            self.market.sessions,
            lambda s: (Ledger(s).account("@world").id, Ledger(s).account(ESCROW_ACCOUNT).id),
        )
        self.model: dict[int, Totals] = {i: [0, 0, 0, 0] for i in self.ids.values()}
        self.keys: dict[str, tuple[str, int]] = {}  # idempotency key -> (account, amount)
        self.open: dict[int, tuple[int, int, datetime]] = {}  # hold -> (debit, amount, timeout)
        self.now = datetime.now(UTC)

    def teardown(self) -> None:
        self.market.close()
        shutil.rmtree(self.home, ignore_errors=True)

    def tx(self, fn):  # type: ignore[no-untyped-def]
        return run_transaction(self.market.sessions, lambda s: fn(Ledger(s)))

    def move(
        self, debit: int, credit: int, *, dp: int = 0, dpo: int = 0, cp: int = 0, cpo: int = 0
    ) -> None:
        self.model[debit][0] += dp
        self.model[debit][1] += dpo
        self.model[credit][2] += cp
        self.model[credit][3] += cpo

    def available(self, account: int) -> int:
        t = self.model[account]
        return t[3] - t[1] - t[0]

    @rule(
        who=st.sampled_from(DEVELOPERS),
        amount=st.integers(1, 5_000_000),
        key=st.sampled_from(["key-00001", "key-00002", "key-00003", None]),
    )
    def deposit(self, who: str, amount: int, key: str | None) -> None:
        previous = self.keys.get(key) if key else None
        if previous is not None and previous != (who, amount):
            try:
                self.market.deposit(who, amount, idempotency_key=key)
            except ConflictError:
                return
            raise AssertionError("an idempotency key was reused for another deposit")
        self.market.deposit(who, amount, idempotency_key=key)
        if previous is None:  # a retry of the same request changes nothing
            self.move(self.ids["@world"], self.ids[who], dpo=amount, cpo=amount)
            if key:
                self.keys[key] = (who, amount)

    @rule(
        target=holds,
        who=st.sampled_from(DEVELOPERS),
        amount=st.integers(1, 3_000_000),
        timeout_s=st.integers(10, 1000),
    )
    def hold(self, who: str, amount: int, timeout_s: int):  # type: ignore[no-untyped-def]
        debit, escrow = self.ids[who], self.ids["@escrow"]
        timeout = self.now + timedelta(seconds=timeout_s)
        try:
            hold_id = self.tx(
                lambda lg: lg.transfer(
                    debit, escrow, amount, "hold", pending=True, timeout_at=timeout
                )
            )
        except InsufficientFundsError:
            assert amount > self.available(debit)
            return -1
        assert amount <= self.available(debit)
        self.move(debit, escrow, dp=amount, cp=amount)
        self.open[hold_id] = (debit, amount, timeout)
        return hold_id

    @rule(target=resolved, hold_id=consumes(holds), share=st.floats(0, 1))
    def post(self, hold_id: int, share: float):  # type: ignore[no-untyped-def]
        if hold_id not in self.open:
            return hold_id
        debit, amount, _ = self.open.pop(hold_id)
        part = int(amount * share)
        self.tx(lambda lg: lg.post(lg.pending_transfer(hold_id), part))
        self.move(debit, self.ids["@escrow"], dp=-amount, dpo=part, cp=-amount, cpo=part)
        return hold_id

    @rule(target=holds, hold_id=consumes(holds), amount=st.integers(0, 3_000_000))
    def adjust(self, hold_id: int, amount: int):  # type: ignore[no-untyped-def]
        """Adjusting resolves the hold and opens a new one for ``amount`` (the old id is spent)."""
        if hold_id not in self.open:
            return -1
        debit, held, timeout = self.open[hold_id]
        try:
            new_id = self.tx(
                lambda lg: lg.adjust(lg.pending_transfer(hold_id), amount, timeout_at=timeout)
            )
        except InsufficientFundsError:
            assert amount - held > self.available(debit)
            return -1
        del self.open[hold_id]
        self.move(debit, self.ids["@escrow"], dp=amount - held, cp=amount - held)
        self.resolving_twice_is_refused(hold_id)
        self.open[new_id] = (debit, amount, timeout)
        return new_id

    @rule(target=resolved, hold_id=consumes(holds))
    def void(self, hold_id: int):  # type: ignore[no-untyped-def]
        if hold_id not in self.open:
            return hold_id
        debit, amount, _ = self.open.pop(hold_id)
        self.tx(lambda lg: lg.void(lg.pending_transfer(hold_id)))
        self.move(debit, self.ids["@escrow"], dp=-amount, cp=-amount)
        return hold_id

    @rule(seconds=st.integers(1, 1500))
    def time_passes(self, seconds: int) -> None:
        """Holds past their timeout are voided, as reconcile does."""
        self.now += timedelta(seconds=seconds)

        def expire(lg: Ledger) -> list[int]:
            expired = lg.expired_holds(self.now)
            for h in expired:
                lg.void(h, memo="timed out")
            return [h.id for h in expired]

        for hold_id in self.tx(expire):
            debit, amount, _ = self.open.pop(hold_id)
            self.move(debit, self.ids["@escrow"], dp=-amount, cp=-amount)
        assert all(timeout >= self.now for _, _, timeout in self.open.values())

    @rule(hold_id=resolved)
    def resolving_twice_is_refused(self, hold_id: int) -> None:
        if hold_id < 0:
            return
        try:
            self.tx(lambda lg: lg.void(lg.pending_transfer(hold_id)))
        except LedgerError:
            return
        raise AssertionError(f"hold #{hold_id} was resolved twice")

    @invariant()
    def the_database_agrees_with_the_model(self) -> None:
        rows = run_transaction(self.market.sessions, lambda s: balances(s))
        by_id = {self.ids[b.account]: b for b in rows if b.account in self.ids}
        for account_id, t in self.model.items():
            b = by_id[account_id]
            assert [b.debits_pending, b.debits_posted, b.credits_pending, b.credits_posted] == t

    @invariant()
    def debits_equal_credits_and_nobody_overdraws(self) -> None:
        sums = [sum(t[i] for t in self.model.values()) for i in range(4)]
        assert sums[0] == sums[2] and sums[1] == sums[3]
        assert all(self.available(self.ids[d]) >= 0 for d in DEVELOPERS)

    @invariant()
    def the_chain_verifies(self) -> None:
        report = run_transaction(self.market.sessions, verify)
        assert report.ok, report.problems


def _open(s, name: str) -> int:  # type: ignore[no-untyped-def]
    acct = Account(name=name, kind="developer", must_not_overdraw=True)
    s.add(acct)
    s.flush()
    return acct.id


LedgerMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=25, deadline=None)
TestLedgerStateMachine = LedgerMachine.TestCase
