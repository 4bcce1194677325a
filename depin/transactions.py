"""Transactions for the market: one per public method, on one database, written once.

``Marketplace`` inherits this plumbing; its methods then only say what to do:

    _tx     run work in one transaction (retried whole on PostgreSQL's conflicts), spending
            a signed request's nonce in it first; through the group-commit writer in a server
    _read   run work in one read snapshot that holds no writer up
    _once   run work once per idempotency key: a retry gets the first answer back
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from depin import nonces
from depin.config import Settings
from depin.db.engine import make_engine, read_session, run_transaction, session_factory
from depin.db.group import GroupCommit
from depin.db.migrate import ensure_schema
from depin.db.models import Setting
from depin.errors import ConflictError, UnauthenticatedError
from depin.idempotency import KeyTaken, once
from depin.limits import IDEMPOTENCY_ATTEMPTS
from depin.nonces import SeenNonce
from depin.wakeups import Wakeups
from scheduler import Snapshot

T = TypeVar("T")


class Transactions:
    """A database the market writes through: engine, sessions, and how work runs in them."""

    def __init__(self, settings: Settings | None = None, *, group_commit: bool = False) -> None:
        """``group_commit``: a server's many concurrent writes go through one writer thread
        and commit together (``depin.db.group``); a CLI process writes directly."""
        self.settings = settings or Settings.from_env()
        if self.settings.is_sqlite:
            self.settings.ensure_home()
        self.engine = make_engine(self.settings.database_url)
        ensure_schema(self.engine)
        self.sessions = session_factory(self.engine)
        self._writer = GroupCommit(self.sessions) if group_commit else None
        self._fleet: tuple[int, Snapshot, dict[int, int]] | None = None  # as admission sees it
        self.wakeups = Wakeups()
        self.market_id: str = self._read(lambda s: s.get_one(Setting, "market_id").value)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    def _tx(self, work: Callable[[Session], T], nonce: SeenNonce | None = None) -> T:
        """``work`` in one transaction; a signed request's ``nonce`` is recorded in it first,
        so a replay is refused and a refused request spends no nonce."""

        def spend_then(s: Session) -> T:
            if nonce is not None and not nonces.record(s, [nonce]):
                raise UnauthenticatedError(
                    "this signed request was already used (a replay): sign it again"
                )
            return work(s)

        if self._writer is not None:
            return self._writer.run(spend_then)
        return run_transaction(self.sessions, spend_then)

    def _read(self, work: Callable[[Session], T]) -> T:
        with read_session(self.sessions) as session:
            return work(session)

    def _once(
        self,
        key: str | None,
        operation: str,
        request: Any,
        work: Callable[[Session], Any],
        nonce: SeenNonce | None = None,
    ) -> Any:
        """One transaction that runs ``work`` once per idempotency key (see ``depin.idempotency``).

        ``work`` returns something JSON can hold; a retry with the key gets it back.
        """

        def tx(s: Session) -> Any:
            return once(s, key, operation, request, lambda: work(s))

        for _ in range(IDEMPOTENCY_ATTEMPTS):
            try:
                return self._tx(tx, nonce)
            except KeyTaken:
                continue  # a twin claimed the key first: the next attempt reads its result
        raise ConflictError(f"idempotency key {key!r} is busy: retry the request")
