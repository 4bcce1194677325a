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

from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin import accounts, agents, audit, drivers, intake, nonces, reserve, settlement, views
from depin.agentdesk import AgentDesk
from depin.db.engine import read_session
from depin.db.models import Account, IdempotencyKey, utcnow
from depin.errors import ConflictError, DepinError, ForbiddenError, InputError
from depin.gcpause import gc_paused
from depin.idempotency import check_key
from depin.keys import key_id as compute_key_id
from depin.ledger import Balance, Ledger, VerifyReport, entry_record, iter_entries
from depin.ledger import verify as verify_chain
from depin.limits import DRIVER_TIMEOUT_S, MAX_BATCH_JOBS, MAX_CLAIM_LAUNCHES
from depin.manifest import Envelope
from depin.nonces import SeenNonce
from depin.runtime.work import CycleCommit, Launch, Outcome, PendingWork
from depin.spec import JobSpec, NodeSpec
from depin.states import JobState
from depin.submission import Verifier, admit_envelopes, load_keys, queue, request_of
from depin.wakeups import JOBS, WORK
from providers import registry
from scheduler import Offer, Plan, Snapshot
from scheduler.request import Request
from scheduler.search import Hit, search

T = TypeVar("T")


class Marketplace(AgentDesk):
    """Accounts, nodes, jobs, allocations and the ledger, over one database."""

    # -- accounts and keys ---------------------------------------------------------------------
    def create_account(
        self,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        kind: str = "developer",
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
    ) -> views.AccountView:
        """Open a developer (or provider) account that ``public_key`` may sign for."""
        accounts.check_new_account(name, kind)
        kid = compute_key_id(public_key)
        request = {"name": name, "kind": kind, "key_id": kid}
        try:
            self._once(
                idempotency_key,
                "create_account",
                request,
                lambda s: accounts.create(s, name, kind, public_key),
                nonce,
            )
        except IntegrityError as exc:
            raise ConflictError(f"account {name!r} or key {kid} already exists") from exc
        return self.account(name)

    def account(self, name: str) -> views.AccountView:
        return self._read(lambda s: views.account_view(s, name))

    def deposit(
        self,
        name: str,
        amount_micro_usd: int,
        *,
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
    ) -> Balance:
        """Pay money into an account from outside the market."""
        if amount_micro_usd <= 0:
            raise InputError("deposit amount must be above 0 USD")
        request = {"account": name, "micro_usd": amount_micro_usd}
        work = lambda s: accounts.deposit(s, name, amount_micro_usd)  # noqa: E731
        self._once(idempotency_key, "deposit", request, work, nonce)
        return self.account(name).balance

    def balances(
        self, account: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[Balance]:
        """Every account's balance by name (after ``after``, a page's cursor), or one's."""
        return self._read(lambda s: views.balance_page(s, account, after=after, limit=limit))

    def registered_keys(self, key_ids: Sequence[str]) -> list[views.KeyView]:
        """Which of ``key_ids`` are registered, to whom, in what state: one read."""
        return self._read(lambda s: views.key_views(s, key_ids=key_ids))

    def keys_of(self, account: str) -> list[views.KeyView]:
        """Every key registered to ``account``, oldest first."""
        return self._read(lambda s: views.key_views(s, account=account))

    def rotate_key(
        self,
        account: str,
        public_key: Ed25519PublicKey,
        *,
        not_after: datetime | None = None,
        revoke_old: bool = False,
        nonce: SeenNonce | None = None,
    ) -> tuple[views.KeyView, list[views.KeyView]]:
        """Register a new key and, with ``revoke_old``, revoke the account's other active keys,
        in one transaction; returns the new key and those revoked."""
        work = lambda s: accounts.rotate(  # noqa: E731
            s, account, public_key, not_after=not_after, revoke_old=revoke_old
        )
        try:
            return self._tx(work, nonce)
        except IntegrityError as exc:
            raise ConflictError(f"key {compute_key_id(public_key)} is already registered") from exc

    def revoke_key(
        self, key_id: str, *, by: str | None = None, nonce: SeenNonce | None = None
    ) -> views.KeyView:
        """Revoke a key: from now on nothing it signs is accepted (with ``by``: if it is
        that account's)."""
        return self._tx(lambda s: accounts.revoke(s, key_id, by=by), nonce)

    def signer(self, key_id: str) -> accounts.Signer | None:
        """Who signs with ``key_id`` (a signed request's check): an account's key, the
        operator's, or nobody."""
        return self._read(lambda s: accounts.signer(s, key_id))

    def operator_key(self) -> tuple[str, str] | None:
        """The operator's (key id, base64 public key): the key that signs deposits."""
        return self._read(accounts.operator_key)

    def set_operator_key(self, public_key: Ed25519PublicKey) -> bool:
        """Make ``public_key`` the operator's unless the market has one already."""
        return self._tx(lambda s: accounts.set_operator_key(s, public_key))

    def record_nonce(self, nonce: SeenNonce) -> None:
        """Spend a signed read's nonce (a mutation spends its own in its transaction)."""
        self._tx(lambda s: None, nonce)

    # -- nodes ---------------------------------------------------------------------------------
    def add_node(
        self,
        spec: NodeSpec,
        *,
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
    ) -> views.NodeView:
        def work(s: Session) -> int:
            provider = Ledger(s).account(spec.provider)
            if provider.kind != "provider":
                raise InputError(
                    f"account {spec.provider!r} is not a provider: register one with "
                    "`depin provider register NAME --key KEY`"
                )
            return registry.add_node(s, provider.id, spec).id

        request = spec.model_dump(mode="json")
        node_id = self._once(idempotency_key, "add_node", request, work, nonce)
        return self._read(lambda s: views.node_view(s, node_id))

    def add_nodes(self, specs: Sequence[NodeSpec], *, nonce: SeenNonce | None = None) -> list[int]:
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

        return self._tx(work, nonce) if specs else []

    def nodes(self, *, after_id: int = 0, limit: int | None = None) -> list[views.NodeView]:
        """Registered nodes in id order (after ``after_id``, a page's cursor)."""
        return self._read(lambda s: views.node_views(s, after_id=after_id, limit=limit))

    def node(self, node_id: int) -> views.NodeView:
        return self._read(lambda s: views.node_view(s, node_id))

    def offers(self) -> list[Offer]:
        return self._read(registry.offers)

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        """Free capacity that could take ``request`` now, ranked (``depin offers``): the kept
        fleet with this moment's free GPUs."""
        fleet, free = self._read(lambda s: (self._fleet_of(s), registry.free_capacity(s)))
        now = fleet.scratch()
        now.set_free(*free)
        try:
            return search(Request.of(request), now, sort=sort, limit=limit)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    # -- submission ----------------------------------------------------------------------------
    def submit(
        self,
        envelope: Envelope,
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
        issuer: str | None = None,
    ) -> views.JobView:
        """Verify a signed manifest, hold its maximum cost in escrow and queue the job.

        Verification happens before anything in the payload is parsed; nothing is
        written unless every check passes.
        """
        ids = self.submit_many(
            [envelope], now=now, idempotency_key=idempotency_key, nonce=nonce, issuer=issuer
        )
        return self.job(ids[0])

    def submit_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
        issuer: str | None = None,
    ) -> list[int]:
        """Submit a batch of envelopes in one transaction, all or none; returns the job ids.

        With ``issuer`` (who signed the request), each envelope must be that account's.
        """
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
                return self._once(idempotency_key, "submit", request, lambda s: None, nonce)

        keys, fleet, prices = self._admission(key_ids)
        admitted = admit_envelopes(envelopes, keys, fleet, prices, audience=self.market_id, now=now)
        wrong = [a.claims.issuer for a in admitted if issuer not in (None, a.claims.issuer)]
        if wrong:
            raise ForbiddenError(f"you sign as {issuer!r}; the envelope is {wrong[0]!r}'s")
        request = [request_of(a.claims) for a in admitted]
        ids: list[int] = self._once(
            idempotency_key, "submit", request, lambda s: queue(s, admitted, now=now), nonce
        )
        self.wakeups.notify(JOBS)
        return ids

    def submit_each(self, subs: Sequence[intake.Submission]) -> list[views.JobView | DepinError]:
        """Many separate requests' submissions, each with its own outcome, in one transaction
        (``depin.intake``; a server's group commit); one by one if another process raced."""
        now = utcnow()
        keys, fleet, prices = self._admission(
            [g.keyid for u in subs for g in u.envelope.signatures]
        )
        admitted = intake.admit_each(subs, keys, fleet, prices, audience=self.market_id, now=now)
        try:
            outcomes = self._tx(lambda s: intake.queue_each(s, subs, admitted, now=now))
        except intake.RaceLost:
            outcomes = [self._one(u) for u in subs]
        ids = [o for o in outcomes if isinstance(o, int)]
        if ids:
            self.wakeups.notify(JOBS)
        found = {v.id: v for v in self._read(lambda s: views.job_views(s, job_ids=ids))}
        return [found[o] if isinstance(o, int) else o for o in outcomes]

    def _one(self, sub: intake.Submission) -> int | DepinError:
        try:
            return self.submit_many(
                [sub.envelope],
                idempotency_key=sub.idempotency_key,
                nonce=sub.nonce,
                issuer=sub.issuer,
            )[0]
        except DepinError as exc:
            return exc

    def _admission(self, key_ids: list[str]) -> tuple[Any, Snapshot, dict[int, int]]:
        """Who signs ``key_ids``, and the whole fleet as admission sees it (kept until the
        fleet changes: one cheap read of its version, not of every node)."""

        def read(s: Session) -> tuple[Any, Snapshot, dict[int, int]]:
            fleet = self._fleet_of(s)
            assert self._fleet is not None
            return load_keys(s, key_ids), fleet, self._fleet[2]

        return self._read(read)

    def _fleet_of(self, s: Session) -> Snapshot:
        """Every registered node, all GPUs free (what could ever run where), kept until the
        fleet changes; a caller that needs this moment's free GPUs sets them on a scratch."""
        version, cached = registry.version(s), self._fleet
        if cached is None or cached[0] != version:
            offers, prices = registry.offers_and_prices(s, full=True)
            cached = self._fleet = (version, Snapshot(offers), prices)
        return cached[1]

    # -- jobs ----------------------------------------------------------------------------------
    def jobs(
        self,
        *,
        account: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
        before_id: int | None = None,
    ) -> list[views.JobView]:
        """Jobs newest first (older than ``before_id``, a page's cursor)."""
        return self._read(
            lambda s: views.job_views(
                s, account=account, state=state, limit=limit, before_id=before_id
            )
        )

    def job_owner(self, job_id: int) -> str:
        """The account a job belongs to (one cheap read, for a check of who may act on it)."""
        return self._read(lambda s: views.job_owner(s, job_id))

    def job(self, job_id: int) -> views.JobView:
        return self._read(lambda s: views.job_view(s, job_id))

    def allocations(
        self, node_id: int, *, limit: int = 100, before_id: int | None = None
    ) -> list[views.AllocationView]:
        """The allocations on a node, newest first: what its provider reads."""
        return self._read(
            lambda s: views.allocation_views(s, node_id, limit=limit, before_id=before_id)
        )

    def explain(self, job_id: int) -> views.ExplainView:
        """Why the job went where it went, or why it is not running: the plan's record."""
        return self._read(lambda s: views.explain_view(s, job_id))

    def place(
        self,
        job_id: int,
        node_id: int,
        *,
        driver_id: str | None = None,
        idempotency_key: str | None = None,
        nonce: SeenNonce | None = None,
    ) -> list[int]:
        """Reserve a pending job on a node of the caller's choosing (see ``reserve.place``)."""
        request = {"job": job_id, "node": node_id}
        return self._once(
            idempotency_key,
            "place",
            request,
            lambda s: reserve.place(s, job_id, node_id, driver_id=driver_id),
            nonce,
        )

    def cancel(self, job_id: int, *, nonce: SeenNonce | None = None) -> views.JobView:
        """Cancel a job: at once unless it runs, else once its drivers have stopped it."""
        self._tx(lambda s: settlement.cancel(s, job_id, now=utcnow()), nonce)
        self.wakeups.notify(WORK)  # an agent running it hears at once
        return self.job(job_id)

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
            commit = self._tx(lambda s: reserve.reserve(s, work, result, driver_id=driver_id))
        if commit.reserved:
            self.wakeups.notify(WORK)
        return commit

    def claim_reserved(
        self,
        driver_id: str,
        *,
        limit: int = MAX_CLAIM_LAUNCHES,
        now: datetime | None = None,
        ray_agents_only: bool = False,
    ) -> list[Launch]:
        """Mark reserved allocations running and return what to launch (``ray_agents_only``:
        only on nodes whose Ray-mode agents joined the operator's cluster)."""
        at, keys_dir, market_id = now or utcnow(), self.settings.keys_dir, self.market_id
        return self._tx(
            lambda s: settlement.claim(
                s,
                driver_id=driver_id,
                market_id=market_id,
                keys_dir=keys_dir,
                limit=limit,
                now=at,
                ray_agents_only=ray_agents_only,
            )
        )

    def finish(self, outcome: Outcome, *, now: datetime | None = None) -> None:
        """Settle an allocation that ended (see ``settlement.finish``); ``now`` is when the
        market saw the outcome, the end of what it pays for."""
        seen_at = now or utcnow()
        self._tx(lambda s: settlement.finish(s, outcome, market_id=self.market_id, now=seen_at))

    def cancellations(self, driver_id: str) -> list[int]:
        """Running allocations of ``driver_id`` whose owners cancelled their jobs: stop them."""
        return self._read(lambda s: settlement.cancellations(s, driver_id))

    # -- drivers (processes that launch work) --------------------------------------------------
    def register_driver(self, kind: str) -> str:
        return self._tx(lambda s: drivers.register(s, kind))

    def driver_heartbeat(self, driver_id: str) -> None:
        self._tx(lambda s: drivers.heartbeat(s, driver_id))

    def retire_driver(self, driver_id: str) -> None:
        self._tx(lambda s: drivers.retire(s, driver_id))

    def scheduler_running(self) -> bool:
        """True when a live ``depin scheduler run`` (or a server's loop) is heartbeating."""
        return self._read(drivers.scheduler_alive)

    def reconcile(self, *, now: datetime | None = None) -> list[int]:
        """Requeue dead drivers' work, void expired holds, mark silent nodes offline and forget
        expired nonces; returns the allocations given up on."""
        at = now or utcnow()
        cutoff = at - timedelta(seconds=DRIVER_TIMEOUT_S)

        def work(s: Session) -> list[int]:
            lost = settlement.reconcile(s, now=at, driver_cutoff=cutoff)
            timeout_s = self.settings.node_ttl_s + self.settings.node_grace_s
            lost += agents.expire_silent(s, now=at, timeout_s=timeout_s)
            nonces.prune(s, at)
            return lost

        return self._tx(work)

    # -- ledger --------------------------------------------------------------------------------
    def ledger_entries(
        self, *, account: str | None = None, limit: int = 100, before_id: int | None = None
    ) -> list[views.EntryView]:
        """The newest ``limit`` entries (of ``account``, or all; older than ``before_id``, a
        page's cursor), oldest of them first."""
        return self._read(
            lambda s: views.entry_views(s, account=account, limit=limit, before_id=before_id)
        )

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
