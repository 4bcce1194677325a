"""Double-entry accounting in integer micro-USD, after TigerBeetle's model.

Every account carries four running totals: debits and credits, each pending
and posted. A transfer moves an amount from a debit account to a credit
account; a *pending* transfer (an escrow hold) only reserves it, and is later
resolved exactly once: posted (fully or in part, the rest returned) or voided.
Transfers are immutable; each carries the hash of the one before it, so
``verify`` finds the first entry that was changed, inserted or removed.

Rules every writer keeps:
- a transaction that writes the ledger locks the chain head (``Ledger.lock``)
  before any other row, so writers never deadlock and the chain stays linear;
- an entry's kind fits its pending flag and the hold it resolves, and an
  amount is a non-negative int (``Ledger.append`` refuses the rest unwritten);
- developer accounts never overdraw (checked here, enforced by a CHECK);
- over all accounts, debits equal credits, pending and posted.

A third way to resolve a hold is to *adjust* it: one entry that resolves the
hold and is itself a new hold, between the same accounts, for a new amount
(``pending`` with a ``pending_id``). It is the void and the new hold in one.

Money flow of a job: deposit (@world -> developer), hold (developer -> @escrow,
pending), at allocation the hold is adjusted to the locked price (a replica
past the first holds its own share), at the end the used part is posted and
paid out (@escrow -> provider).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from depin.db.engine import db_time, executemany
from depin.db.models import Account, LedgerHead, Transfer, utcnow
from depin.errors import InsufficientFundsError, LedgerError, NotFoundError
from depin.money import format_usd

GENESIS_HASH = "0" * 64
WORLD_ACCOUNT = "@world"  # money entering and leaving the market (deposits, withdrawals)
ESCROW_ACCOUNT = "@escrow"  # holds between submission and settlement
VERIFY_BATCH = 5000


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's totals; ``available`` is what a credit-normal account can still spend."""

    account: str
    kind: str
    debits_pending: int
    debits_posted: int
    credits_pending: int
    credits_posted: int

    @property
    def available(self) -> int:
        return self.credits_posted - self.debits_posted - self.debits_pending

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted

    @classmethod
    def of(cls, account: Account) -> Balance:
        return cls(
            account.name,
            account.kind,
            account.debits_pending,
            account.debits_posted,
            account.credits_pending,
            account.credits_posted,
        )


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(timespec="microseconds")


def entry_values(t: Transfer) -> tuple[Any, ...]:
    """The fields an entry's hash covers, in a fixed order and a backend-independent form."""
    return (
        t.id,
        t.debit_account_id,
        t.credit_account_id,
        t.amount_micro_usd,
        t.kind,
        bool(t.pending),
        t.pending_id,
        _iso(t.timeout_at),
        t.job_id,
        t.allocation_id,
        t.memo,
        _iso(t.created_at),
    )


ENTRY_FIELDS = (
    "id",
    "debit_account_id",
    "credit_account_id",
    "amount_micro_usd",
    "kind",
    "pending",
    "pending_id",
    "timeout_at",
    "job_id",
    "allocation_id",
    "memo",
    "created_at",
)


def entry_record(t: Transfer) -> dict[str, Any]:
    """An entry as exported: the hashed fields, in the form hashed, plus both hashes."""
    return dict(zip(ENTRY_FIELDS, entry_values(t), strict=True)) | {
        "prev_hash": t.prev_hash,
        "hash": t.hash,
    }


_PLAIN_TEXT = re.compile(r"^[ !#-\[\]-~]*$")  # printable ASCII without '"' or backslash


def _json_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``, without the call for plain text (most memos)."""
    return f'"{text}"' if _PLAIN_TEXT.match(text) else json.dumps(text, ensure_ascii=False)


def entry_hash(prev_hash: str, values: tuple[Any, ...]) -> str:
    """SHA-256 over the previous entry's hash and this entry's canonical encoding.

    Fields joined by ``|`` in a fixed order, None as empty and booleans as 0/1;
    the memo, the only free text, comes last as a JSON string, so no two
    entries encode alike.
    """
    (id_, debit, credit, amount, kind, pending, held, timeout, job, alloc, memo, created) = values
    body = (
        f"{id_}|{debit}|{credit}|{amount}|{kind}|{1 if pending else 0}|"
        f"{'' if held is None else held}|{'' if timeout is None else timeout}|"
        f"{'' if job is None else job}|{'' if alloc is None else alloc}|{created}|"
        f"{_json_string(memo)}"
    )
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


# Hold and Entry are NamedTuples, immutable like frozen dataclasses but built ~4x faster:
# a scheduling cycle makes a Hold per job and an Entry per placement.
class Hold(NamedTuple):
    """An open pending transfer: what resolving it needs to know."""

    id: int
    debit_account_id: int
    credit_account_id: int
    amount_micro_usd: int
    job_id: int | None = None
    allocation_id: int | None = None

    @classmethod
    def of(cls, t: Transfer) -> Hold:
        return cls(
            t.id,
            t.debit_account_id,
            t.credit_account_id,
            t.amount_micro_usd,
            t.job_id,
            t.allocation_id,
        )


class Entry(NamedTuple):
    """One ledger entry to append: a transfer, a hold (``pending``), a post or void of
    ``hold``, or (``pending`` with a ``hold``) an adjustment of ``hold`` to a new amount."""

    kind: str
    debit_account_id: int
    credit_account_id: int
    amount_micro_usd: int
    pending: bool = False
    hold: Hold | None = None
    job_id: int | None = None
    allocation_id: int | None = None
    memo: str = ""
    timeout_at: datetime | None = None


_ADD_TOTALS = (
    "UPDATE accounts SET debits_pending = debits_pending + ?, debits_posted = debits_posted + ?, "
    "credits_pending = credits_pending + ?, credits_posted = credits_posted + ? WHERE id = ?"
)
_INSERT_ENTRY = (
    "INSERT INTO transfers (id, debit_account_id, credit_account_id, amount_micro_usd, kind, "
    "pending, pending_id, timeout_at, job_id, allocation_id, memo, created_at, prev_hash, hash) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


# Which kinds hold and which resolve a hold: (pending, names a hold). Any other kind (deposit,
# payout ...) moves money outright, neither pending nor resolving a hold.
_SHAPES: dict[str, tuple[bool, bool]] = {
    "hold": (True, False),
    "adjust": (True, True),
    "post": (False, True),
    "void": (False, True),
}
_OUTRIGHT = (False, False)
_HOLDING_KINDS = tuple(sorted(kind for kind, (pending, _) in _SHAPES.items() if pending))
_RESOLVING_KINDS = tuple(sorted(kind for kind, (_, resolves) in _SHAPES.items() if resolves))


def _check_entries(entries: Sequence[Entry], first_id: int) -> None:
    """Refuse, before anything is written, an entry that contradicts itself: a bug upstream
    would otherwise be hashed into the chain for good. ``first_id`` names the entries."""
    for position, e in enumerate(entries):
        amount, hold = e.amount_micro_usd, e.hold
        if type(amount) is not int or amount < 0:  # bool and float are not micro-USD
            raise LedgerError(
                f"entry #{first_id + position} ({e.kind}) has amount {amount!r}: "
                "amounts are non-negative integer micro-USD"
            )
        if (e.pending, hold is not None) != _SHAPES.get(e.kind, _OUTRIGHT):
            raise LedgerError(_misshapen(first_id + position, e))
        if hold is not None and (
            (e.kind == "post" and amount > hold.amount_micro_usd)
            or (e.kind == "void" and amount != hold.amount_micro_usd)
        ):
            raise LedgerError(
                f"entry #{first_id + position} {e.kind}s {amount} of hold #{hold.id} "
                f"for {hold.amount_micro_usd}"
            )


def _misshapen(entry_id: int, e: Entry) -> str:
    """Why an entry's pending flag or hold does not fit its kind (the first that does not)."""
    pending, resolves = _SHAPES.get(e.kind, _OUTRIGHT)
    what = f"entry #{entry_id} ({e.kind})"
    if resolves and e.hold is None:
        return f"{what} names no hold to resolve"
    if not resolves and e.hold is not None:
        return _not_a_resolution(entry_id, e.kind, e.hold.id)
    if pending:
        return f"{what} is not pending, as every {e.kind} is"
    return f"{what} is pending: only {', '.join(_HOLDING_KINDS)} entries are"


def _not_a_resolution(entry_id: int, kind: str, hold_id: int) -> str:
    return (
        f"entry #{entry_id} ({kind}) resolves hold #{hold_id}: "
        f"only {', '.join(_RESOLVING_KINDS)} entries do"
    )


def _moves(e: Entry) -> tuple[int, int]:
    """How much an entry moves (pending, posted): the debit account's debits and the credit
    account's credits move alike."""
    a = e.amount_micro_usd
    if e.hold is not None:
        held = e.hold.amount_micro_usd
        if e.pending:  # an adjustment: the old hold goes, the new amount is held
            return a - held, 0
        return -held, a if e.kind == "post" else 0
    return (a, 0) if e.pending else (0, a)


def open_holds() -> Select[tuple[int]]:
    """The ids of pending transfers no entry has resolved yet (narrow it with ``where``)."""
    resolution = aliased(Transfer)
    return (
        select(Transfer.id)
        .outerjoin(resolution, resolution.pending_id == Transfer.id)
        .where(Transfer.pending.is_(True), resolution.id.is_(None))
    )


class Ledger:
    """Writes entries inside the caller's transaction; the caller commits or rolls back."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._head: LedgerHead | None = None

    # -- the chain head -------------------------------------------------------------
    def lock(self) -> LedgerHead:
        """Lock the chain head for the rest of the transaction (first, before other rows)."""
        if self._head is None:
            stmt = (
                select(LedgerHead)
                .where(LedgerHead.id == 1)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            self._head = self.session.execute(stmt).scalar_one()
        return self._head

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """A savepoint for ledger writes; rolling it back also forgets the cached chain head,
        which may then be ahead of the database (the next ``lock`` reads it again)."""
        try:
            with self.session.begin_nested():
                yield
        except BaseException:
            self._head = None
            raise

    # -- accounts ---------------------------------------------------------------------
    def account(self, name: str) -> Account:
        acct = self.session.execute(
            select(Account).where(Account.name == name)
        ).scalar_one_or_none()
        if acct is None:
            raise NotFoundError(f"no account named {name!r}: create it with `depin account create`")
        return acct

    def balances_of(self, account_ids: set[int]) -> dict[int, Balance]:
        """The current totals of several accounts, in one read."""
        stmt = (
            select(Account)
            .where(Account.id.in_(sorted(account_ids)))
            .execution_options(populate_existing=True)
        )
        return {a.id: Balance.of(a) for a in self.session.execute(stmt).scalars()}

    def balance(self, account_id: int) -> Balance:
        stmt = (
            select(Account)
            .where(Account.id == account_id)
            .execution_options(populate_existing=True)
        )
        return Balance.of(self.session.execute(stmt).scalar_one())

    # -- single entries ---------------------------------------------------------------
    def transfer(
        self,
        debit_id: int,
        credit_id: int,
        amount_micro_usd: int,
        kind: str,
        *,
        pending: bool = False,
        timeout_at: datetime | None = None,
        job_id: int | None = None,
        allocation_id: int | None = None,
        memo: str = "",
    ) -> int:
        """Move (or, if ``pending``, reserve) an amount, never overdrawing; returns its id."""
        if amount_micro_usd < 0:
            raise LedgerError(f"transfer amount must not be negative (got {amount_micro_usd})")
        self.lock()
        self._check_funds(debit_id, amount_micro_usd, memo or kind)
        entry = Entry(
            kind,
            debit_id,
            credit_id,
            amount_micro_usd,
            pending=pending,
            job_id=job_id,
            allocation_id=allocation_id,
            memo=memo,
            timeout_at=timeout_at,
        )
        return self.append([entry])[0]

    def post(self, hold: Hold, amount_micro_usd: int | None = None, *, memo: str = "") -> int:
        """Resolve a hold by posting ``amount`` of it (default: all); the rest returns."""
        amount = hold.amount_micro_usd if amount_micro_usd is None else amount_micro_usd
        if not 0 <= amount <= hold.amount_micro_usd:
            raise LedgerError(
                f"cannot post {amount} of hold #{hold.id} for {hold.amount_micro_usd}"
            )
        self._check_open(hold)
        return self.append([self.resolution(hold, "post", amount, memo)])[0]

    def void(self, hold: Hold, *, memo: str = "") -> int:
        """Resolve a hold by returning all of it."""
        self._check_open(hold)
        return self.append([self.resolution(hold, "void", hold.amount_micro_usd, memo)])[0]

    def adjust(
        self,
        hold: Hold,
        amount_micro_usd: int,
        *,
        allocation_id: int | None = None,
        timeout_at: datetime | None = None,
        memo: str = "",
    ) -> int:
        """Resolve a hold by replacing it with a hold for a new amount; returns the new hold's id.

        Raising the amount needs the difference available; lowering it returns the rest.
        """
        if amount_micro_usd < 0:
            raise LedgerError(f"cannot adjust hold #{hold.id} to {amount_micro_usd}")
        self._check_open(hold)
        more = amount_micro_usd - hold.amount_micro_usd
        if more > 0:
            self._check_funds(hold.debit_account_id, more, memo or "adjust")
        entry = self.adjustment(hold, amount_micro_usd, allocation_id, timeout_at, memo)
        return self.append([entry])[0]

    @staticmethod
    def adjustment(
        hold: Hold,
        amount: int,
        allocation_id: int | None,
        timeout_at: datetime | None,
        memo: str = "",
    ) -> Entry:
        """The entry that adjusts a hold to ``amount``: it resolves ``hold`` and is the new hold."""
        return Entry(
            "adjust",
            hold.debit_account_id,
            hold.credit_account_id,
            amount,
            True,
            hold,
            hold.job_id,
            allocation_id,
            memo,
            timeout_at,
        )

    @staticmethod
    def resolution(hold: Hold, kind: str, amount: int, memo: str = "") -> Entry:
        """The entry that posts (``kind="post"``) or voids a hold."""
        return Entry(
            kind,
            hold.debit_account_id,
            hold.credit_account_id,
            amount,
            hold=hold,
            job_id=hold.job_id,
            allocation_id=hold.allocation_id,
            memo=memo,
        )

    def pending_transfer(self, transfer_id: int) -> Hold:
        t = self.session.get(Transfer, transfer_id)
        if t is None or not t.pending:
            raise LedgerError(f"transfer #{transfer_id} is not a pending transfer")
        return Hold.of(t)

    # -- many entries at once ----------------------------------------------------------
    def append(self, entries: Sequence[Entry]) -> list[int]:
        """Append entries in order, chained by hash, and apply their totals; returns their ids.

        One INSERT for all entries and one UPDATE per account touched, so a
        scheduling cycle commits its ledger work in a few statements. Entries
        that contradict themselves are refused first (``LedgerError``); a hold
        resolved twice trips the UNIQUE constraint on ``pending_id``; an
        overdraft trips the accounts' CHECK.
        """
        if not entries:
            return []
        head = self.lock()
        start = head.seq
        _check_entries(entries, start + 1)
        now = utcnow()
        now_iso = _iso(now)
        stored_now = db_time(self.session, now)
        seq, prev = head.seq, head.hash
        timeouts: dict[datetime | None, tuple[str | None, Any]] = {None: (None, None)}
        rows: list[tuple[Any, ...]] = []
        moved: dict[tuple[int, int], list[int]] = {}  # (debit, credit) -> [pending, posted]
        for e in entries:
            seq += 1
            kind, debit, credit, amount, pending, hold, job_id, alloc_id, memo, timeout = e
            pending_id = None if hold is None else hold.id
            if timeout not in timeouts:  # a cycle's holds share a handful of timeouts
                timeouts[timeout] = (_iso(timeout), db_time(self.session, timeout))
            timeout_iso, timeout_stored = timeouts[timeout]
            values = (seq, debit, credit, amount, kind, pending, pending_id, timeout_iso)
            digest = entry_hash(prev, (*values, job_id, alloc_id, memo, now_iso))
            rows.append(
                (
                    seq,
                    debit,
                    credit,
                    amount,
                    kind,
                    pending,
                    pending_id,
                    timeout_stored,
                    job_id,
                    alloc_id,
                    memo,
                    stored_now,
                    prev,
                    digest,
                )
            )
            prev = digest
            pend, post = _moves(e)
            acc = moved.get((debit, credit)) or moved.setdefault((debit, credit), [0, 0])
            acc[0] += pend
            acc[1] += post
        self._advance(head, start, seq, prev)
        if executemany(self.session, _INSERT_ENTRY, rows) != len(rows):
            raise LedgerError(f"entries #{start + 1}-#{seq} were not all written")
        totals: dict[int, list[int]] = {}
        for (debit, credit), (pend, post) in moved.items():
            d = totals.setdefault(debit, [0, 0, 0, 0])
            d[0] += pend
            d[1] += post
            c = totals.setdefault(credit, [0, 0, 0, 0])
            c[2] += pend
            c[3] += post
        self._add_totals(totals)
        return [r[0] for r in rows]

    def expired_holds(self, now: datetime, *, limit: int = 1000) -> list[Hold]:
        """Open holds whose timeout has passed (TigerBeetle voids these; so does reconcile)."""
        stmt = open_holds().with_only_columns(Transfer).where(Transfer.timeout_at < now)
        rows = self.session.execute(stmt.order_by(Transfer.id).limit(limit)).scalars()
        return [Hold.of(t) for t in rows]

    # -- internals -----------------------------------------------------------------------------
    def _advance(self, head: LedgerHead, start: int, seq: int, digest: str) -> None:
        """Move the chain head from ``start`` to ``seq``, only if the database still has it at
        ``start``: the new entries took the ids after it, and a head that moved since it was
        read (a second Ledger in the session, a cache gone stale) would overlap or gap them.

        Written here, not left to the session's flush, so an expunged head still moves.
        """
        table = LedgerHead.__table__
        moved = self.session.execute(
            update(table)
            .where(table.c.id == 1, table.c.seq == start, table.c.hash == head.hash)
            .values(seq=seq, hash=digest)
        )
        if moved.rowcount != 1:
            now_at = self.session.execute(select(table.c.seq)).scalar_one()
            first = f"entry #{start + 1}" if seq == start + 1 else f"entries #{start + 1}-#{seq}"
            raise LedgerError(
                f"cannot append {first}: the chain head is at #{now_at}, not #{start} "
                "as this ledger read it"
            )
        set_committed_value(head, "seq", seq)
        set_committed_value(head, "hash", digest)

    def _check_open(self, hold: Hold) -> None:
        self.lock()
        resolved = self.session.execute(
            select(Transfer.id).where(Transfer.pending_id == hold.id)
        ).scalar_one_or_none()
        if resolved is not None:
            raise LedgerError(f"hold #{hold.id} was already resolved by entry #{resolved}")

    def _check_funds(self, debit_id: int, amount: int, what: str) -> None:
        acct = self.session.execute(
            select(Account).where(Account.id == debit_id).execution_options(populate_existing=True)
        ).scalar_one()
        if acct.must_not_overdraw:
            available = Balance.of(acct).available
            if amount > available:
                raise InsufficientFundsError(
                    f"account {acct.name!r} has {format_usd(available)} available, "
                    f"{format_usd(amount)} needed for {what}: deposit with "
                    f"`depin account deposit {acct.name} USD`"
                )

    def _add_totals(self, totals: dict[int, list[int]]) -> None:
        """Move every touched account's four totals in one statement; the accounts loaded
        in this session are expired, so a later read sees the new totals."""
        rows = [(*delta, account_id) for account_id, delta in totals.items() if any(delta)]
        try:
            executemany(self.session, _ADD_TOTALS, rows)
        except IntegrityError as exc:
            # The CHECK had the last word: a concurrent writer spent the money first.
            raise InsufficientFundsError(
                "an account cannot cover this transfer (a concurrent charge won)"
            ) from exc
        for account_id in totals:  # only the touched ones: a group commit's session is big
            loaded = self.session.identity_map.get(identity_key(Account, account_id))
            if loaded is not None:
                self.session.expire(loaded)


# -- reading and verifying -----------------------------------------------------------------


def balances(session: Session, *, account: str | None = None) -> list[Balance]:
    stmt = select(Account).order_by(Account.id)
    if account is not None:
        stmt = stmt.where(Account.name == account)
    return [Balance.of(a) for a in session.execute(stmt).scalars()]


def entries(
    session: Session,
    *,
    account_id: int | None = None,
    limit: int = 100,
    after_id: int = 0,
    newest: bool = False,
) -> list[Transfer]:
    """Up to ``limit`` entries in chain order: the first ones after ``after_id``, or with
    ``newest`` the last ones (what `ledger show` lists, as ``tail`` would)."""
    order = Transfer.id.desc() if newest else Transfer.id
    stmt = select(Transfer).where(Transfer.id > after_id).order_by(order).limit(limit)
    if account_id is not None:
        stmt = stmt.where(
            (Transfer.debit_account_id == account_id) | (Transfer.credit_account_id == account_id)
        )
    rows = list(session.execute(stmt).scalars())
    return rows[::-1] if newest else rows


@dataclass(slots=True)
class VerifyReport:
    """The outcome of ``verify``: ok, or the problems found, first broken position first."""

    entries: int = 0
    accounts: int = 0
    problems: list[str] = field(default_factory=list)
    first_bad_position: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "accounts": self.accounts,
            "first_bad_position": self.first_bad_position,
            "problems": list(self.problems),
        }


def iter_entries(session: Session) -> Iterator[Transfer]:
    """Every entry in chain order, a page at a time (pages are let go once read)."""
    after = 0
    while True:
        batch = entries(session, limit=VERIFY_BATCH, after_id=after)
        if not batch:
            return
        yield from batch
        after = batch[-1].id
        session.expunge_all()


def verify(session: Session) -> VerifyReport:
    """Recompute the hash chain and every account's totals from the entries, and check that
    each resolution resolves an open hold between its accounts, is of a kind that resolves
    (adjust, post, void) and, if a post, posts no more than was held."""
    report = VerifyReport()
    totals: dict[int, list[int]] = {}  # account id -> [dpend, dpost, cpend, cpost]
    pending_amounts: dict[int, tuple[int, int, int]] = {}  # hold id -> (amount, debit, credit)
    expected_id, prev_hash = 1, GENESIS_HASH

    def problem(position: int, text: str) -> None:
        if report.first_bad_position is None:
            report.first_bad_position = position
        report.problems.append(text)

    for t in iter_entries(session):
        report.entries += 1
        if report.first_bad_position is None:
            if t.id != expected_id:
                problem(expected_id, f"entry #{expected_id} is missing: removed from the chain")
            elif t.prev_hash != prev_hash:
                problem(
                    t.id,
                    f"entry #{t.id} does not link to the entry before it: inserted or reordered",
                )
            elif entry_hash(prev_hash, entry_values(t)) != t.hash:
                problem(t.id, f"entry #{t.id} was changed after it was written (hash mismatch)")
        expected_id, prev_hash = t.id + 1, t.hash
        _apply(t, totals, pending_amounts, problem)

    head = session.get(LedgerHead, 1)
    if head is None:
        problem(1, "the ledger head row is missing")
    elif report.first_bad_position is None and (
        head.seq != expected_id - 1 or head.hash != prev_hash
    ):
        problem(
            expected_id,
            f"the chain ends at entry #{expected_id - 1} but its head says #{head.seq}: "
            "entries were removed from the end",
        )
    _check_accounts(session, totals, report, problem)
    return report


def _apply(
    t: Transfer,
    totals: dict[int, list[int]],
    pending_amounts: dict[int, tuple[int, int, int]],
    problem: Any,
) -> None:
    debit = totals.setdefault(t.debit_account_id, [0, 0, 0, 0])
    credit = totals.setdefault(t.credit_account_id, [0, 0, 0, 0])
    if t.pending_id is not None:  # a post, a void or an adjustment resolves an open hold
        if t.kind not in _RESOLVING_KINDS:
            problem(t.id, _not_a_resolution(t.id, t.kind, t.pending_id))
        held = pending_amounts.pop(t.pending_id, None)
        if held is None:
            problem(t.id, f"entry #{t.id} resolves #{t.pending_id}, which is not an open hold")
            return
        amount, debit_id, credit_id = held
        if (debit_id, credit_id) != (t.debit_account_id, t.credit_account_id):
            problem(t.id, f"entry #{t.id} resolves hold #{t.pending_id} between other accounts")
        if t.kind == "post" and t.amount_micro_usd > amount:
            problem(
                t.id,
                f"entry #{t.id} posts {t.amount_micro_usd} of hold #{t.pending_id} for {amount}",
            )
        debit[0] -= amount
        credit[2] -= amount
        if t.kind == "post":
            debit[1] += t.amount_micro_usd
            credit[3] += t.amount_micro_usd
    if t.pending:  # a hold, or an adjustment's new amount
        debit[0] += t.amount_micro_usd
        credit[2] += t.amount_micro_usd
        pending_amounts[t.id] = (t.amount_micro_usd, t.debit_account_id, t.credit_account_id)
    elif t.pending_id is None:
        debit[1] += t.amount_micro_usd
        credit[3] += t.amount_micro_usd


def _check_accounts(
    session: Session, totals: dict[int, list[int]], report: VerifyReport, problem: Any
) -> None:
    sums = [0, 0, 0, 0]
    for acct in session.execute(select(Account).order_by(Account.id)).scalars():
        report.accounts += 1
        stored = [
            acct.debits_pending,
            acct.debits_posted,
            acct.credits_pending,
            acct.credits_posted,
        ]
        expected = totals.get(acct.id, [0, 0, 0, 0])
        if stored != expected:
            problem(0, f"account {acct.name!r} totals {stored} do not match its entries {expected}")
        if (
            acct.must_not_overdraw
            and acct.debits_posted + acct.debits_pending > acct.credits_posted
        ):
            problem(0, f"account {acct.name!r} is overdrawn")
        sums = [a + b for a, b in zip(sums, stored, strict=True)]
    if sums[0] != sums[2] or sums[1] != sums[3]:
        problem(
            0,
            f"debits do not equal credits: pending {sums[0]} vs {sums[2]}, "
            f"posted {sums[1]} vs {sums[3]}",
        )
