"""The Marketplace: the one application service, and the only place that changes state.

A facade: each public method is one database transaction (or one read
snapshot) that hands the work to the stage that owns it:

    submission   verify, admit, hold and queue signed manifests
    reserve      commit a plan (a cycle) or one placement by hand
    settlement   claim, finish, requeue, expire holds
    audit        what ``ledger verify`` checks beyond the chain
    views        the read models and their queries

The SDK's ``Client`` reaches it through the ``depin.protocol.Market``
protocol, the scheduler's driver through ``depin.runtime.loop.CycleMarket``.
A method either does everything it says or, on any error, nothing at all.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin import audit, reserve, settlement, views
from depin.config import Settings
from depin.db.engine import make_engine, read_session, run_transaction, session_factory
from depin.db.migrate import ensure_schema
from depin.db.models import Account, AccountKey, Driver, IdempotencyKey, Setting, utcnow
from depin.errors import ConflictError, InputError, NotFoundError
from depin.gcpause import gc_paused
from depin.idempotency import KeyTaken, check_key, once
from depin.keys import key_id as compute_key_id
from depin.keys import public_key_b64
from depin.ledger import (
    WORLD_ACCOUNT,
    Balance,
    Ledger,
    VerifyReport,
    balances,
    entry_record,
    iter_entries,
)
from depin.ledger import verify as verify_chain
from depin.limits import DRIVER_TIMEOUT_S, IDEMPOTENCY_ATTEMPTS, MAX_BATCH_JOBS, MAX_CLAIM_LAUNCHES
from depin.manifest import Envelope
from depin.runtime.work import CycleCommit, Launch, Outcome, PendingWork
from depin.spec import NAME_PATTERN, JobSpec, NodeSpec
from depin.states import JobState
from depin.submission import Verifier, admit_envelopes, load_keys, prune_nonces, queue, request_of
from depin.views import AccountView, EntryView, ExplainView, JobView, KeyView, NodeView
from providers import registry
from scheduler import Offer, Plan, Snapshot
from scheduler.request import Request
from scheduler.search import Hit, search

T = TypeVar("T")
_NAME_RE = re.compile(NAME_PATTERN)
_ACCOUNT_KINDS = ("developer", "provider")


class Marketplace:
    """Accounts, nodes, jobs, allocations and the ledger, over one database."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        if self.settings.is_sqlite:
            self.settings.ensure_home()
        self.engine = make_engine(self.settings.database_url)
        ensure_schema(self.engine)
        self.sessions = session_factory(self.engine)
        self.market_id: str = self._read(
            lambda s: s.execute(
                select(Setting.value).where(Setting.key == "market_id")
            ).scalar_one()
        )

    def close(self) -> None:
        self.engine.dispose()

    def _tx(self, work: Callable[[Session], T]) -> T:
        return run_transaction(self.sessions, work)

    def _read(self, work: Callable[[Session], T]) -> T:
        with read_session(self.sessions) as session:
            return work(session)

    def _once(
        self, key: str | None, operation: str, request: Any, work: Callable[[Session], Any]
    ) -> Any:
        """One transaction that runs ``work`` once per idempotency key (see ``depin.idempotency``).

        ``work`` returns something JSON can hold; a retry with the key gets it back.
        """

        def tx(s: Session) -> Any:
            return once(s, key, operation, request, lambda: work(s))

        for _ in range(IDEMPOTENCY_ATTEMPTS):
            try:
                return self._tx(tx)
            except KeyTaken:
                continue  # a twin claimed the key first: the next attempt reads its result
        raise ConflictError(f"idempotency key {key!r} is busy: retry the request")

    # -- accounts and keys ---------------------------------------------------------------------
    def create_account(
        self,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        kind: str = "developer",
        idempotency_key: str | None = None,
    ) -> AccountView:
        """Open a developer (or provider) account that ``public_key`` may sign for."""
        if kind not in _ACCOUNT_KINDS:
            raise InputError(f"account kind must be developer or provider (got {kind!r})")
        if not _NAME_RE.match(name):
            raise InputError(
                f"bad account name {name!r}: use lowercase letters, digits, '.', '_' or '-'"
            )
        kid = compute_key_id(public_key)

        def work(s: Session) -> int:
            if s.execute(select(Account.id).where(Account.name == name)).first():
                raise ConflictError(f"account {name!r} already exists")
            if s.execute(select(AccountKey.id).where(AccountKey.key_id == kid)).first():
                raise ConflictError(f"key {kid} is already registered to another account")
            acct = Account(name=name, kind=kind, must_not_overdraw=True)
            s.add(acct)
            s.flush()
            s.add(AccountKey(account_id=acct.id, key_id=kid, public_key=public_key_b64(public_key)))
            s.flush()
            return acct.id

        request = {"name": name, "kind": kind, "key_id": kid}
        try:
            self._once(idempotency_key, "create_account", request, work)
        except IntegrityError as exc:
            raise ConflictError(f"account {name!r} or key {kid} already exists") from exc
        return self.account(name)

    def account(self, name: str) -> AccountView:
        return self._read(lambda s: views.account_view(s, name))

    def deposit(
        self, name: str, amount_micro_usd: int, *, idempotency_key: str | None = None
    ) -> Balance:
        """Pay money into an account from outside the market."""
        if amount_micro_usd <= 0:
            raise InputError("deposit amount must be above 0 USD")

        def work(s: Session) -> int:
            ledger = Ledger(s)
            ledger.lock()
            acct = ledger.account(name)
            if acct.kind not in _ACCOUNT_KINDS:
                raise InputError(f"cannot deposit into system account {name!r}")
            world = ledger.account(WORLD_ACCOUNT)
            return ledger.transfer(
                world.id, acct.id, amount_micro_usd, "deposit", memo=f"deposit to {name}"
            )

        request = {"account": name, "micro_usd": amount_micro_usd}
        self._once(idempotency_key, "deposit", request, work)
        return self.account(name).balance

    def balances(self, account: str | None = None) -> list[Balance]:
        found = self._read(lambda s: balances(s, account=account))
        if account is not None and not found:
            raise NotFoundError(f"no account named {account!r}")
        return found

    def registered_keys(self, key_ids: Sequence[str]) -> list[KeyView]:
        """Which of ``key_ids`` are registered, to whom, in what state: one read."""
        return self._read(lambda s: views.key_views(s, key_ids=key_ids))

    def keys_of(self, account: str) -> list[KeyView]:
        """Every key registered to ``account``, oldest first."""
        return self._read(lambda s: views.key_views(s, account=account))

    def add_key(
        self, account: str, public_key: Ed25519PublicKey, *, not_after: datetime | None = None
    ) -> KeyView:
        """Register another key for an account (rotation); the old ones stay until revoked."""
        return self.rotate_key(account, public_key, not_after=not_after)[0]

    def rotate_key(
        self,
        account: str,
        public_key: Ed25519PublicKey,
        *,
        not_after: datetime | None = None,
        revoke_old: bool = False,
    ) -> tuple[KeyView, list[KeyView]]:
        """Register a new key and, with ``revoke_old``, revoke the account's other active keys,
        in one transaction; returns the new key and those revoked."""
        kid = compute_key_id(public_key)

        def work(s: Session) -> tuple[KeyView, list[KeyView]]:
            Ledger(s).lock()  # ordered against submissions, as revoke_key is
            acct = Ledger(s).account(account)
            if acct.kind not in _ACCOUNT_KINDS:
                raise InputError(f"system account {account!r} has no keys")
            if s.execute(select(AccountKey.id).where(AccountKey.key_id == kid)).first():
                raise ConflictError(f"key {kid} is already registered")
            revoked = []
            if revoke_old:
                for old in s.execute(
                    select(AccountKey)
                    .where(AccountKey.account_id == acct.id, AccountKey.state == "active")
                    .order_by(AccountKey.id)
                ).scalars():
                    old.state, old.revoked_at = "revoked", utcnow()
                    revoked.append(old)
            key = AccountKey(
                account_id=acct.id,
                key_id=kid,
                public_key=public_key_b64(public_key),
                not_after=not_after,
            )
            s.add(key)
            s.flush()
            return KeyView.of(key, acct), [KeyView.of(k, acct) for k in revoked]

        try:
            return self._tx(work)
        except IntegrityError as exc:
            raise ConflictError(f"key {kid} is already registered") from exc

    def revoke_key(self, key_id: str) -> KeyView:
        """Revoke a key: from now on nothing it signs is accepted."""

        def work(s: Session) -> KeyView:
            # Submissions re-read their keys under the ledger's lock before they write: taking
            # it here too orders a revocation wholly before or after any submission.
            Ledger(s).lock()
            row = s.execute(
                select(AccountKey, Account)
                .join(Account, Account.id == AccountKey.account_id)
                .where(AccountKey.key_id == key_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no registered key {key_id!r}: see `depin keys list --account NAME`"
                )
            key, acct = row
            if key.state != "revoked":
                key.state, key.revoked_at = "revoked", utcnow()
            s.flush()
            return KeyView.of(key, acct)

        return self._tx(work)

    # -- nodes ---------------------------------------------------------------------------------
    def add_node(self, spec: NodeSpec, *, idempotency_key: str | None = None) -> NodeView:
        def work(s: Session) -> int:
            provider = Ledger(s).account(spec.provider)
            if provider.kind != "provider":
                raise InputError(
                    f"account {spec.provider!r} is not a provider: register one with "
                    "`depin provider register NAME --key KEY`"
                )
            return registry.add_node(s, provider.id, spec).id

        node_id = self._once(idempotency_key, "add_node", spec.model_dump(mode="json"), work)
        return self._read(lambda s: views.node_view(s, node_id))

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Register a fleet in one transaction, all or none; returns the node ids."""

        def work(s: Session) -> list[int]:
            names = sorted({spec.provider for spec in specs})
            found = dict(
                s.execute(
                    select(Account.name, Account.id).where(
                        Account.name.in_(names), Account.kind == "provider"
                    )
                ).all()
            )
            missing = [n for n in names if n not in found]
            if missing:
                raise InputError(
                    f"not registered as providers: {', '.join(missing)}; "
                    "register them with `depin provider register NAME --key KEY`"
                )
            return registry.add_nodes(s, found, list(specs))

        return self._tx(work) if specs else []

    def nodes(self) -> list[NodeView]:
        return self._read(views.node_views)

    def heartbeat(self, node_id: int) -> None:
        self._tx(lambda s: registry.heartbeat(s, node_id))

    def offers(self) -> list[Offer]:
        return self._read(registry.offers)

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        """Free capacity that could take ``request`` now, ranked (``depin offers``)."""
        try:
            return search(Request.of(request), Snapshot(self.offers()), sort=sort, limit=limit)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    # -- submission ----------------------------------------------------------------------------
    def submit(
        self, envelope: Envelope, *, now: datetime | None = None, idempotency_key: str | None = None
    ) -> JobView:
        """Verify a signed manifest, hold its maximum cost in escrow and queue the job.

        Verification happens before anything in the payload is parsed; nothing is
        written unless every check passes.
        """
        return self.job(self.submit_many([envelope], now=now, idempotency_key=idempotency_key)[0])

    def submit_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Submit a batch of envelopes in one transaction, all or none; returns the job ids."""
        if not envelopes:
            return []
        now = now or utcnow()
        key_ids = [sig.keyid for e in envelopes for sig in e.signatures]
        if idempotency_key is not None:
            done = self._read(lambda s: s.get(IdempotencyKey, check_key(idempotency_key)))
            if done is not None:  # a retry: answer it without the freshness checks
                keys = self._read(lambda s: load_keys(s, key_ids))
                verifier = Verifier(keys, audience=self.market_id, now=now)
                request = [verifier.signed_request(e) for e in envelopes]
                return self._once(idempotency_key, "submit", request, lambda s: None)

        def read(s: Session) -> tuple[Any, list[Offer], dict[int, int]]:
            offers, prices = registry.offers_and_prices(s, full=True)
            return load_keys(s, key_ids), offers, prices

        keys, offers, prices = self._read(read)
        admitted = admit_envelopes(
            envelopes, keys, Snapshot(offers), prices, audience=self.market_id, now=now
        )
        request = [request_of(a.claims) for a in admitted]
        return self._once(idempotency_key, "submit", request, lambda s: queue(s, admitted, now=now))

    # -- jobs ----------------------------------------------------------------------------------
    def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]:
        return self._read(lambda s: views.job_views(s, account=account, state=state, limit=limit))

    def job(self, job_id: int) -> JobView:
        return self._read(lambda s: views.job_view(s, job_id))

    def explain(self, job_id: int) -> ExplainView:
        """Why the job went where it went, or why it is not running: the plan's record."""
        return self._read(lambda s: views.explain_view(s, job_id))

    def place(
        self,
        job_id: int,
        node_id: int,
        *,
        driver_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Reserve a pending job on a node of the caller's choosing (see ``reserve.place``)."""
        request = {"job": job_id, "node": node_id}
        return self._once(
            idempotency_key,
            "place",
            request,
            lambda s: reserve.place(s, job_id, node_id, driver_id=driver_id),
        )

    # -- scheduling: one cycle is pending_work -> plan -> commit_plan --------------------------
    def pending_work(
        self,
        job_ids: Sequence[int] | None = None,
        *,
        limit: int = MAX_BATCH_JOBS,
        nodes_version: int | None = None,
    ) -> PendingWork:
        """Pending jobs (oldest first) and the fleet, read in one snapshot."""
        with gc_paused():
            return self._read(
                lambda s: reserve.pending_work(s, job_ids, limit=limit, nodes_version=nodes_version)
            )

    def commit_plan(self, work: PendingWork, result: Plan, *, driver_id: str | None) -> CycleCommit:
        """Reserve every placement of ``result`` in one transaction (see ``depin.reserve``)."""
        with gc_paused():
            return self._tx(lambda s: reserve.reserve(s, work, result, driver_id=driver_id))

    def claim_reserved(
        self, driver_id: str, *, limit: int = MAX_CLAIM_LAUNCHES, now: datetime | None = None
    ) -> list[Launch]:
        """Mark reserved allocations running and return what to launch."""
        return self._tx(
            lambda s: settlement.claim(
                s,
                driver_id=driver_id,
                market_id=self.market_id,
                keys_dir=self.settings.keys_dir,
                limit=limit,
                now=now or utcnow(),
            )
        )

    def finish(self, outcome: Outcome, *, now: datetime | None = None) -> None:
        """Settle an allocation that ended (see ``settlement.finish``); ``now`` is when the
        market saw the outcome, the end of what it pays for."""
        seen_at = now or utcnow()
        self._tx(lambda s: settlement.finish(s, outcome, market_id=self.market_id, now=seen_at))

    # -- drivers (processes that launch work) --------------------------------------------------
    def register_driver(self, kind: str) -> str:
        driver_id = f"{kind}-{uuid.uuid4().hex[:12]}"
        host, pid = socket.gethostname()[:128], os.getpid()
        self._tx(lambda s: s.add(Driver(id=driver_id, kind=kind, host=host, pid=pid)))
        return driver_id

    def driver_heartbeat(self, driver_id: str) -> None:
        self._tx(
            lambda s: s.execute(
                update(Driver).where(Driver.id == driver_id).values(heartbeat_at=utcnow())
            )
        )

    def retire_driver(self, driver_id: str) -> None:
        self._tx(lambda s: s.execute(Driver.__table__.delete().where(Driver.id == driver_id)))

    def scheduler_running(self) -> bool:
        """True when a live ``depin scheduler run`` is heartbeating."""
        cutoff = utcnow() - timedelta(seconds=DRIVER_TIMEOUT_S)
        live = select(Driver.id).where(Driver.kind == "scheduler", Driver.heartbeat_at >= cutoff)
        return self._read(lambda s: s.execute(live).first() is not None)

    def reconcile(self, *, now: datetime | None = None) -> list[int]:
        """Requeue dead drivers' work, void expired holds, mark silent nodes offline and forget
        expired nonces; returns the allocations given up on."""
        at = now or utcnow()
        cutoff = at - timedelta(seconds=DRIVER_TIMEOUT_S)

        def work(s: Session) -> list[int]:
            lost = settlement.reconcile(s, now=at, driver_cutoff=cutoff)
            registry.mark_silent_nodes_offline(s, now=at)
            prune_nonces(s, at)
            return lost

        return self._tx(work)

    # -- ledger --------------------------------------------------------------------------------
    def ledger_entries(self, *, account: str | None = None, limit: int = 100) -> list[EntryView]:
        """The newest ``limit`` entries (of ``account``, or all), oldest of them first."""
        return self._read(lambda s: views.entry_views(s, account=account, limit=limit))

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        """Every ledger entry with the exact values its hash covers (``depin ledger export``)."""
        with read_session(self.sessions) as s:  # one snapshot; a reader holds no writer up
            for t in iter_entries(s):
                yield entry_record(t)

    def verify_ledger(self) -> VerifyReport:
        """The hash chain and balances, then receipts, holds and capacity (``depin.audit``)."""

        def work(s: Session) -> VerifyReport:
            report = verify_chain(s)
            report.problems.extend(audit.audit_receipts(s, self.market_id))
            report.problems.extend(audit.audit_holds(s))
            report.problems.extend(audit.audit_capacity(s))
            return report

        return self._read(work)
