"""The Marketplace: the one application service, and the only place that changes state.

The CLI calls ``Client``; ``Client`` calls a Marketplace in-process (or, later,
over HTTP). Each public method is one database transaction: it either does
everything it says or, on any error, nothing at all.
"""

from __future__ import annotations

import json
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin import receipts
from depin.config import Settings
from depin.db.engine import make_engine, read_session, run_transaction, session_factory
from depin.db.migrate import ensure_schema
from depin.db.models import (
    ALLOCATION_ACTIVE_STATES,
    Account,
    AccountKey,
    Allocation,
    Driver,
    IdempotencyKey,
    Job,
    JobManifest,
    Node,
    PlanRecord,
    Receipt,
    Setting,
    utcnow,
)
from depin.errors import (
    CapacityError,
    ConflictError,
    InputError,
    NotFoundError,
    UnschedulableError,
)
from depin.gcpause import gc_paused
from depin.idempotency import KeyTaken, check_key, once
from depin.keys import key_id as compute_key_id
from depin.keys import public_key_b64, public_key_from_b64
from depin.ledger import (
    WORLD_ACCOUNT,
    Balance,
    Ledger,
    VerifyReport,
    balances,
    entry_record,
    iter_entries,
)
from depin.ledger import entries as ledger_entries
from depin.ledger import open_holds as ledger_open_holds
from depin.ledger import verify as verify_ledger
from depin.manifest import (
    Envelope,
)
from depin.money import usage_cost_micro
from depin.receipts import AllocationFacts, ReceiptSigner
from depin.reserve import PENDING_HOLD_TIMEOUT_S, CycleCommit, PendingJob, PendingWork, reserve
from depin.spec import NAME_PATTERN, JobSpec, NodeSpec
from depin.submission import (
    KeyRecord,
    Verifier,
    admit_envelopes,
    load_keys,
    prune_nonces,
    queue,
    request_of,
)
from depin.views import AccountView, JobView, KeyView, NodeView
from providers import registry
from scheduler import Offer, Plan, Snapshot, plan
from scheduler.request import Request
from scheduler.search import Hit, search
from scheduler.work import Launch, Outcome

T = TypeVar("T")

# A driver (scheduler or waiting submit) that has not heartbeated for this long is dead:
# its reserved and running allocations are reconciled (requeued).
DRIVER_TIMEOUT_S = 30
MAX_BATCH_JOBS = 20_000  # jobs one scheduling cycle plans at most
OUTPUT_TAIL_CHARS = 4000
_NAME_RE = re.compile(NAME_PATTERN)


class Marketplace:
    """Accounts, nodes, jobs, allocations and the ledger, over one database."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        if self.settings.is_sqlite:
            self.settings.ensure_home()
        self.engine = make_engine(self.settings.database_url)
        ensure_schema(self.engine)
        self.sessions = session_factory(self.engine)
        self.market_id = self._read(
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
        if kind not in ("developer", "provider"):
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

    def _guard_unique(self, work: Callable[[Session], T], message: str) -> T:
        """Run ``work``; a unique constraint that a racing writer hit first is a ConflictError."""
        try:
            return self._tx(work)
        except IntegrityError as exc:
            raise ConflictError(message) from exc

    def _once(
        self, key: str | None, operation: str, request: Any, work: Callable[[Session], Any]
    ) -> Any:
        """One transaction that runs ``work`` once per idempotency key (see ``depin.idempotency``).

        ``work`` returns something JSON can hold; a retry with the key gets it back.
        """

        def tx(s: Session) -> Any:
            return once(s, key, operation, request, lambda: work(s))

        for _ in range(3):
            try:
                return self._tx(tx)
            except KeyTaken:
                continue  # a twin claimed the key first: the next attempt reads its result
        raise ConflictError(f"idempotency key {key!r} is busy: retry the request")

    def account(self, name: str) -> AccountView:
        def work(s: Session) -> AccountView:
            acct = Ledger(s).account(name)
            kids = s.execute(
                select(AccountKey.key_id)
                .where(AccountKey.account_id == acct.id)
                .order_by(AccountKey.id)
            ).scalars()
            return AccountView(acct.id, acct.name, acct.kind, list(kids), Balance.of(acct))

        return self._read(work)

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
            if acct.kind not in ("developer", "provider"):
                raise InputError(f"cannot deposit into system account {name!r}")
            world = ledger.account(WORLD_ACCOUNT)
            return ledger.transfer(
                world.id, acct.id, amount_micro_usd, "deposit", memo=f"deposit to {name}"
            )

        self._once(
            idempotency_key, "deposit", {"account": name, "micro_usd": amount_micro_usd}, work
        )
        return self.account(name).balance

    def balances(self, account: str | None = None) -> list[Balance]:
        found = self._read(lambda s: balances(s, account=account))
        if account is not None and not found:
            raise NotFoundError(f"no account named {account!r}")
        return found

    def account_for_key(self, key_id: str) -> str | None:
        """The account a registered key signs for, if any."""
        return self._read(
            lambda s: s.execute(
                select(Account.name)
                .join(AccountKey, AccountKey.account_id == Account.id)
                .where(AccountKey.key_id == key_id)
            ).scalar_one_or_none()
        )

    def add_key(
        self, account: str, public_key: Ed25519PublicKey, *, not_after: datetime | None = None
    ) -> KeyView:
        """Register another key for an account (rotation); the old ones stay until revoked."""
        kid = compute_key_id(public_key)

        def work(s: Session) -> KeyView:
            acct = Ledger(s).account(account)
            if acct.kind not in ("developer", "provider"):
                raise InputError(f"system account {account!r} has no keys")
            if s.execute(select(AccountKey.id).where(AccountKey.key_id == kid)).first():
                raise ConflictError(f"key {kid} is already registered")
            key = AccountKey(
                account_id=acct.id,
                key_id=kid,
                public_key=public_key_b64(public_key),
                not_after=not_after,
            )
            s.add(key)
            s.flush()
            return KeyView.of(key, acct.name)

        return self._guard_unique(work, f"key {kid} is already registered")

    def revoke_key(self, key_id: str) -> KeyView:
        """Revoke a key: from now on nothing it signs is accepted."""

        def work(s: Session) -> KeyView:
            # Submissions re-read their keys under the ledger's lock before they write: taking
            # it here too orders a revocation wholly before or after any submission.
            Ledger(s).lock()
            row = s.execute(
                select(AccountKey, Account.name)
                .join(Account, Account.id == AccountKey.account_id)
                .where(AccountKey.key_id == key_id)
                .with_for_update()
            ).first()
            if row is None:
                raise NotFoundError(
                    f"no registered key {key_id!r}: see `depin keys list --account NAME`"
                )
            key, name = row
            if key.state != "revoked":
                key.state, key.revoked_at = "revoked", utcnow()
            s.flush()
            return KeyView.of(key, name)

        return self._tx(work)

    def keys_of(self, account: str) -> list[KeyView]:
        """Every key registered to ``account``, oldest first."""

        def work(s: Session) -> list[KeyView]:
            acct = Ledger(s).account(account)
            rows = s.execute(
                select(AccountKey).where(AccountKey.account_id == acct.id).order_by(AccountKey.id)
            ).scalars()
            return [KeyView.of(k, acct.name) for k in rows]

        return self._read(work)

    def registered_key(self, key_id: str) -> Ed25519PublicKey | None:
        """The public key registered under ``key_id``, if any."""
        row = self._read(lambda s: load_keys(s, [key_id]).get(key_id))
        return None if row is None else public_key_from_b64(row.public_key)

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
        return self._read(lambda s: NodeView.of(registry.get_node(s, node_id), spec.provider))

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
        def work(s: Session) -> list[NodeView]:
            names = dict(
                s.execute(select(Account.id, Account.name).where(Account.kind == "provider")).all()
            )
            return [NodeView.of(n, names.get(n.provider_id, "?")) for n in registry.list_nodes(s)]

        return self._read(work)

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

        def read(s: Session) -> tuple[dict[str, KeyRecord], list[Offer], dict[int, int]]:
            offers, prices = registry.offers_and_prices(s, full=True)
            return load_keys(s, key_ids), offers, prices

        if idempotency_key is not None:
            done = self._read(lambda s: s.get(IdempotencyKey, check_key(idempotency_key)))
            if done is not None:  # a retry: answer it without the freshness checks
                keys = self._read(lambda s: load_keys(s, key_ids))
                verifier = Verifier(keys, audience=self.market_id, now=now)
                request = [verifier.signed_request(e) for e in envelopes]
                return self._once(idempotency_key, "submit", request, lambda s: None)
        keys, offers, prices = self._read(read)
        admitted = admit_envelopes(
            envelopes, keys, Snapshot(offers), prices, audience=self.market_id, now=now
        )
        request = [request_of(a.claims) for a in admitted]
        return self._once(idempotency_key, "submit", request, lambda s: queue(s, admitted, now=now))

    # -- jobs ----------------------------------------------------------------------------------
    def jobs(
        self, *, account: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[JobView]:
        def work(s: Session) -> list[JobView]:
            stmt = (
                select(Job, Account.name, JobManifest.spec_json)
                .join(Account, Account.id == Job.account_id)
                .join(JobManifest, JobManifest.job_id == Job.id)
            )
            if account is not None:
                stmt = stmt.where(Job.account_id == Ledger(s).account(account).id)
            if state is not None:
                stmt = stmt.where(Job.state == state)
            rows = s.execute(stmt.order_by(Job.id.desc()).limit(limit)).all()
            allocs = _allocations_by_job(s, [job.id for job, _, _ in rows])
            reasons = _plan_reasons(s, [job for job, _, _ in rows])
            return [
                JobView.of(
                    job, name, spec, allocs.get(job.id, []), reasons.get(job.plan_record_id, [])
                )
                for job, name, spec in rows
            ]

        return self._read(work)

    def job(self, job_id: int) -> JobView:
        def work(s: Session) -> JobView:
            row = s.execute(
                select(Job, Account.name, JobManifest.spec_json)
                .join(Account, Account.id == Job.account_id)
                .join(JobManifest, JobManifest.job_id == Job.id)
                .where(Job.id == job_id)
            ).first()
            if row is None:
                raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
            job, name, spec = row
            allocs = _allocations_by_job(s, [job.id]).get(job.id, [])
            reasons = _plan_reasons(s, [job]).get(job.plan_record_id, [])
            return JobView.of(job, name, spec, allocs, reasons)

        return self._read(work)

    def explain(self, job_id: int) -> dict[str, Any]:
        """Why the job went where it went, or why it is not running: the plan's record.

        A pending job the scheduler has not looked at yet is planned afresh.
        """
        job = self.job(job_id)

        def work(s: Session) -> tuple[str | None, list[Offer]]:
            row = s.get(Job, job_id)
            assert row is not None
            record = s.get(PlanRecord, row.plan_record_id) if row.plan_record_id else None
            return (record.metric_json if record else None), registry.offers(s)

        metric_json, offers = self._read(work)
        if metric_json:
            metric = json.loads(metric_json)
            source = "recorded by the scheduler"
        else:
            fresh = plan([JobSpec.model_validate(job.spec)], offers, keys=[job.id])
            metric = fresh.metrics[job.id].to_dict()
            source = "planned now against current free capacity"
        return {
            "job": job.id,
            "name": job.name,
            "state": job.state,
            "source": source,
            "node_ids": [a.node_id for a in job.allocations if a.state != "lost"],
            "metric": metric,
            "reasons": job.reasons,
        }

    # -- scheduling: one cycle is pending_work -> plan -> commit_plan --------------------------
    def pending_work(
        self,
        job_ids: Sequence[int] | None = None,
        *,
        limit: int = MAX_BATCH_JOBS,
        nodes_version: int | None = None,
    ) -> PendingWork:
        """Pending jobs (oldest first) and the fleet, read in one snapshot.

        Given the ``nodes_version`` of a snapshot the caller keeps, and if the
        fleet has not changed since, only free GPUs are read.
        """

        def work(s: Session) -> PendingWork:
            stmt = (
                select(
                    Job.id,
                    Job.name,
                    Job.account_id,
                    Job.hold_transfer_id,
                    Job.max_cost_micro_usd,
                    JobManifest.template_json,
                )
                .join(JobManifest, JobManifest.job_id == Job.id)
                .where(Job.state == "pending")
            )
            if job_ids is not None:
                stmt = stmt.where(Job.id.in_(list(job_ids)))
            rows = s.execute(stmt.order_by(Job.id).limit(limit)).all()
            version = registry.version(s)
            if nodes_version == version:
                offers, prices, free = None, {}, registry.free_capacity(s)
            else:
                (offers, prices), free = registry.offers_and_prices(s), None
            templates: dict[str, JobSpec] = {}  # jobs of one template parse it once
            jobs = []
            for r in rows:
                base = templates.get(r.template_json)
                if base is None:
                    data = json.loads(r.template_json) | {"name": r.name}
                    base = templates[r.template_json] = JobSpec.model_validate(data)
                spec = base if base.name == r.name else base.model_copy(update={"name": r.name})
                jobs.append(
                    PendingJob(r.id, r.account_id, r.hold_transfer_id, r.max_cost_micro_usd, spec)
                )
            return PendingWork(jobs, offers, prices, version, free)

        with gc_paused():
            return self._read(work)

    def commit_plan(self, work: PendingWork, result: Plan, *, driver_id: str | None) -> CycleCommit:
        """Reserve every placement of ``result`` in one transaction (see ``depin.reserve``)."""
        with gc_paused():
            return self._tx(lambda s: reserve(s, work, result, driver_id=driver_id))

    def place(
        self,
        job_id: int,
        node_id: int,
        *,
        driver_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Reserve a pending job on one chosen node (an allocation attempt); its allocation ids.

        Refused with a ``CapacityError`` when the node lacks the free GPUs (the
        conditional update and the nodes' CHECK decide, whoever races), with an
        ``UnschedulableError`` when the node could never take the job.
        """

        def work(s: Session) -> list[int]:
            ledger = Ledger(s)
            ledger.lock()
            job = s.get(Job, job_id, populate_existing=True)
            if job is None:
                raise NotFoundError(f"no job with id {job_id}: see `depin job list`")
            if job.state != "pending":
                raise ConflictError(f"job {job_id} is {job.state}, not pending")
            spec = _spec_of(s, job.id)
            if spec.replicas != 1:
                raise InputError(
                    f"job {job_id} has {spec.replicas} replicas: place it with the scheduler"
                )
            node = registry.get_node(s, node_id)
            if node.status != "active":
                raise CapacityError(
                    f"node {node_id} is {node.status} and takes no new work: "
                    "pick an active node (`depin node list`)"
                )
            offer = registry.to_offer(node, full=True)
            attempt = plan([spec], [offer], keys=[job_id])
            if not attempt.placements:
                raise UnschedulableError(
                    f"node {node_id} can never run job {job_id}: "
                    + "; ".join(attempt.unplaced[job_id]),
                    attempt.unplaced[job_id],
                )
            work_item = PendingWork(
                [
                    PendingJob(
                        job.id,
                        job.account_id,
                        job.hold_transfer_id or 0,
                        job.max_cost_micro_usd,
                        spec,
                    )
                ],
                None,
                {node_id: node.price_micro_usd_per_gpu_hour},
            )
            result = replace(attempt, metrics={job_id: attempt.metrics[job_id]})
            allocs = reserve(s, work_item, result, driver_id=driver_id).reserved
            if not allocs:
                free = registry.get_node(s, node_id).gpus_free
                needs = spec.resources.gpus
                raise CapacityError(
                    f"node {node_id} has {free} free GPU(s), job {job_id} needs {needs}"
                )
            return allocs

        return self._once(idempotency_key, "place", {"job": job_id, "node": node_id}, work)

    def claim_reserved(self, driver_id: str, *, limit: int = 1000) -> list[Launch]:
        """Mark reserved allocations running and return what to launch.

        A driver launches what it reserved itself and what was reserved for any
        launcher (``scheduler run --no-launch``, ``job place``).
        """

        def work(s: Session) -> list[Launch]:
            rows = s.execute(
                select(Allocation, Job)
                .join(Job, Job.id == Allocation.job_id)
                .where(
                    Allocation.state == "reserved",
                    (Allocation.driver_id == driver_id) | Allocation.driver_id.is_(None),
                )
                .order_by(Allocation.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            now = utcnow()
            launches = []
            specs = _specs_of(s, [job.id for _, job in rows])
            keys = _provider_keys_of(s, [alloc.node_id for alloc, _ in rows], active_only=True)
            for alloc, job in rows:
                alloc.state, alloc.started_at, alloc.driver_id = "running", now, driver_id
                job.state, job.updated_at = "running", now
                spec = specs[job.id]
                signer = ReceiptSigner(
                    _facts(alloc, job, self.market_id),
                    tuple(keys.get(alloc.node_id, {})),
                    str(self.settings.keys_dir),
                )
                launches.append(
                    Launch(
                        alloc.id,
                        job.id,
                        job.name,
                        alloc.node_id,
                        alloc.gpus,
                        spec.command,
                        alloc.time_limit_s,
                        signer,
                    )
                )
            return launches

        return self._tx(work)

    def finish(self, outcome: Outcome) -> None:
        """Settle an allocation that ended: pay the used part, return the rest, free the GPUs.

        A lost allocation (its node or worker died) pays nothing; a single-replica
        job is queued again. Finishing twice is a no-op: only a running allocation ends.
        """

        def work(s: Session) -> None:
            ledger = Ledger(s)
            ledger.lock()
            alloc = s.get(Allocation, outcome.allocation_id, populate_existing=True)
            if alloc is None or alloc.state != "running":
                return
            job = s.get(Job, alloc.job_id, populate_existing=True)
            assert job is not None
            spec = _spec_of(s, job.id)
            if outcome.lost and spec.replicas == 1:
                _requeue(s, ledger, alloc, job, outcome.error or "node lost", spec)
                return
            _settle(s, ledger, alloc, job, outcome, self.market_id)
            _end_job_if_done(s, job, spec)

        self._tx(work)

    # -- drivers (processes that launch on Ray) ------------------------------------------------
    def register_driver(self, kind: str) -> str:
        driver_id = f"{kind}-{uuid.uuid4().hex[:12]}"
        self._tx(
            lambda s: s.add(
                Driver(id=driver_id, kind=kind, host=socket.gethostname()[:128], pid=os.getpid())
            )
        )
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
        return self._read(
            lambda s: (
                s.execute(
                    select(Driver.id).where(
                        Driver.kind == "scheduler", Driver.heartbeat_at >= cutoff
                    )
                ).first()
                is not None
            )
        )

    def reconcile(self, *, now: datetime | None = None) -> list[int]:
        """Requeue the allocations of drivers that died; returns the affected allocation ids."""
        cutoff = (now or utcnow()) - timedelta(seconds=DRIVER_TIMEOUT_S)

        def work(s: Session) -> list[int]:
            ledger = Ledger(s)
            ledger.lock()
            live = select(Driver.id).where(Driver.heartbeat_at >= cutoff)
            orphans = (
                s.execute(
                    select(Allocation).where(
                        Allocation.state.in_(ALLOCATION_ACTIVE_STATES),
                        Allocation.driver_id.is_not(None),
                        Allocation.driver_id.not_in(live),
                    )
                )
                .scalars()
                .all()
            )
            for alloc in orphans:
                job = s.get(Job, alloc.job_id)
                assert job is not None
                _requeue(s, ledger, alloc, job, f"driver {alloc.driver_id} stopped")
            s.execute(Driver.__table__.delete().where(Driver.heartbeat_at < cutoff))
            registry.mark_silent_nodes_offline(s)
            prune_nonces(s, now or utcnow())
            expired = _expire_holds(s, ledger, now or utcnow())
            return [a.id for a in orphans] + expired

        return self._tx(work)

    # -- ledger --------------------------------------------------------------------------------
    def ledger_entries(
        self, *, account: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` entries (of ``account``, or all), oldest of them first."""

        def work(s: Session) -> list[dict[str, Any]]:
            names = dict(s.execute(select(Account.id, Account.name)).all())
            account_id = None
            if account is not None:
                account_id = next((i for i, n in names.items() if n == account), None)
                if account_id is None:
                    raise NotFoundError(f"no account named {account!r}")
            rows = ledger_entries(s, account_id=account_id, limit=limit, newest=True)
            return [
                {
                    "id": t.id,
                    "kind": t.kind,
                    "debit": names[t.debit_account_id],
                    "credit": names[t.credit_account_id],
                    "amount_micro_usd": t.amount_micro_usd,
                    "pending": t.pending,
                    "pending_id": t.pending_id,
                    "job_id": t.job_id,
                    "allocation_id": t.allocation_id,
                    "memo": t.memo,
                    "created_at": t.created_at.isoformat(),
                    "hash": t.hash,
                }
                for t in rows
            ]

        return self._read(work)

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        """Every ledger entry with the exact values its hash covers (``depin ledger export``)."""
        with read_session(self.sessions) as s:  # one snapshot; a reader holds no writer up
            for t in iter_entries(s):
                yield entry_record(t)

    def verify_ledger(self) -> VerifyReport:
        """The hash chain and balances (``depin.ledger.verify``), then every provider receipt."""

        def work(s: Session) -> VerifyReport:
            report = verify_ledger(s)
            report.problems.extend(_audit_receipts(s, self.market_id))
            report.problems.extend(_audit_holds_and_capacity(s))
            return report

        return self._read(work)


# -- helpers that run inside a transaction -------------------------------------------------


def _plan_reasons(s: Session, jobs: Sequence[Job]) -> dict[int | None, list[str]]:
    """The scheduler's reasons for jobs that wait or were refused, by plan record id."""
    ids = {
        j.plan_record_id
        for j in jobs
        if j.plan_record_id and j.state in ("pending", "unschedulable")
    }
    if not ids:
        return {}
    rows = s.execute(select(PlanRecord.id, PlanRecord.reasons_json).where(PlanRecord.id.in_(ids)))
    return {rid: json.loads(r) for rid, r in rows if r}


def _allocations_by_job(s: Session, job_ids: Sequence[int]) -> dict[int, list[Allocation]]:
    out: dict[int, list[Allocation]] = {}
    if not job_ids:
        return out
    for alloc in s.execute(
        select(Allocation).where(Allocation.job_id.in_(list(job_ids))).order_by(Allocation.id)
    ).scalars():
        out.setdefault(alloc.job_id, []).append(alloc)
    return out


def _spec_of(s: Session, job_id: int) -> JobSpec:
    return _specs_of(s, [job_id])[job_id]


def _specs_of(s: Session, job_ids: Sequence[int]) -> dict[int, JobSpec]:
    """The manifests of ``job_ids``, in one query; every job has one."""
    rows = s.execute(
        select(JobManifest.job_id, JobManifest.spec_json).where(JobManifest.job_id.in_(job_ids))
    ).all()
    specs = {job_id: JobSpec.model_validate_json(text) for job_id, text in rows}
    missing = set(job_ids) - specs.keys()
    assert not missing, f"jobs without a manifest: {sorted(missing)}"
    return specs


def _facts(alloc: Allocation, job: Job, market_id: str) -> AllocationFacts:
    return AllocationFacts(
        allocation_id=alloc.id,
        job_id=job.id,
        node_id=alloc.node_id,
        gpus=alloc.gpus,
        price_micro_usd_per_gpu_hour=alloc.price_micro_usd_per_gpu_hour,
        manifest_digest=job.manifest_digest,
        market=market_id,
    )


def _provider_keys(s: Session, node_id: int, *, active_only: bool) -> dict[str, Ed25519PublicKey]:
    """The public keys of the provider that owns ``node_id``, by key id."""
    return _provider_keys_of(s, [node_id], active_only=active_only).get(node_id, {})


def _provider_keys_of(
    s: Session, node_ids: Sequence[int] | None, *, active_only: bool
) -> dict[int, dict[str, Ed25519PublicKey]]:
    """``_provider_keys`` for many nodes (None: every node) in one query:
    node id -> key id -> public key."""
    stmt = select(Node.id, AccountKey.key_id, AccountKey.public_key).join(
        AccountKey, AccountKey.account_id == Node.provider_id
    )
    if node_ids is not None:
        stmt = stmt.where(Node.id.in_(sorted(set(node_ids))))
    if active_only:
        stmt = stmt.where(AccountKey.state == "active")
    out: dict[int, dict[str, Ed25519PublicKey]] = {}
    for node_id, key_id, public in s.execute(stmt):
        out.setdefault(node_id, {})[key_id] = public_key_from_b64(public)
    return out


def _finder(keys: dict[str, Ed25519PublicKey]) -> Callable[[str], list[Ed25519PublicKey]]:
    return lambda key_id: [keys[key_id]] if key_id in keys else []


def _settle(
    s: Session, ledger: Ledger, alloc: Allocation, job: Job, outcome: Outcome, market_id: str
) -> None:
    """Pay what the provider's usage receipt attests (nothing without one), free the GPUs.

    The receipt's times bound the bill; the hold bounds it again. A missing or
    invalid receipt ends the allocation unpaid and returns the whole hold.
    """
    hold = ledger.pending_transfer(alloc.hold_transfer_id or 0)
    used, started, ended, error = 0, outcome.started_at, outcome.ended_at, outcome.error
    if not outcome.lost:
        facts = _facts(alloc, job, market_id)
        keys = _provider_keys(s, alloc.node_id, active_only=True)
        try:
            usage = receipts.verify_usage(outcome.usage_json, facts, _finder(keys))
        except receipts.ReceiptError as exc:
            error = f"{error + '; ' if error else ''}provider not paid: {exc}"
        else:
            cost = usage_cost_micro(
                alloc.price_micro_usd_per_gpu_hour, alloc.gpus, usage.duration_ms
            )
            used, started, ended = (
                min(hold.amount_micro_usd, cost),
                usage.started_at,
                usage.ended_at,
            )
            _store_receipts(s, alloc.id, outcome, usage.key_id, facts, keys)
    if used:
        ledger.post(
            hold, used, memo=f"job {job.id}: {outcome.duration_ms} ms on node {alloc.node_id}"
        )
        node = registry.get_node(s, alloc.node_id)
        ledger.transfer(
            hold.credit_account_id,
            node.provider_id,
            used,
            "payout",
            job_id=job.id,
            allocation_id=alloc.id,
            memo=f"job {job.id} on node {node.id}",
        )
    else:
        ledger.void(hold, memo=f"job {job.id}: allocation {alloc.id} used nothing")
    registry.release_capacity(s, alloc.node_id, alloc.gpus)
    alloc.state = "lost" if outcome.lost else ("succeeded" if outcome.succeeded else "failed")
    alloc.started_at, alloc.ended_at = started, ended
    alloc.exit_code, alloc.error = outcome.exit_code, None if error is None else error[:500]
    alloc.output_tail = outcome.output_tail[-OUTPUT_TAIL_CHARS:]
    alloc.cost_micro_usd = used


def _store_receipts(
    s: Session,
    allocation_id: int,
    outcome: Outcome,
    usage_key: str,
    facts: AllocationFacts,
    keys: dict[str, Ed25519PublicKey],
) -> None:
    """Keep the verified usage receipt, and the acceptance when it verifies too."""
    s.add(
        Receipt(
            allocation_id=allocation_id,
            kind="usage",
            key_id=usage_key,
            envelope_json=outcome.usage_json,
        )
    )
    try:
        claims = receipts.verify(outcome.acceptance_json, "acceptance", facts, _finder(keys))
    except receipts.ReceiptError:
        return
    s.add(
        Receipt(
            allocation_id=allocation_id,
            kind="acceptance",
            key_id=claims["key_id"],
            envelope_json=outcome.acceptance_json,
        )
    )


def _audit_receipts(s: Session, market_id: str) -> list[str]:
    """Receipts verify under their providers' keys and match their allocations.

    Paid work must have a usage receipt; unpaid work needs none.
    """
    problems = []
    rows = s.execute(
        select(Allocation, Job)
        .join(Job, Job.id == Allocation.job_id)
        .where(Allocation.state.in_(("succeeded", "failed", "lost")))
        .order_by(Allocation.id)
    ).all()
    stored: dict[tuple[int, str], str] = {
        (r.allocation_id, r.kind): r.envelope_json for r in s.execute(select(Receipt)).scalars()
    }
    keys_by_node = _provider_keys_of(s, None, active_only=False)
    for alloc, job in rows:
        keys = keys_by_node.get(alloc.node_id, {})
        facts = _facts(alloc, job, market_id)
        usage_json = stored.get((alloc.id, "usage"))
        if usage_json is None and not alloc.cost_micro_usd:
            continue  # unpaid work needs no receipt
        try:
            usage = receipts.verify_usage(usage_json, facts, _finder(keys))
            if (alloc.started_at, alloc.ended_at) != (usage.started_at, usage.ended_at):
                raise receipts.ReceiptError(
                    f"allocation {alloc.id}: usage receipt times differ from the allocation's"
                )
            cost = usage_cost_micro(
                alloc.price_micro_usd_per_gpu_hour, alloc.gpus, usage.duration_ms
            )
            if (alloc.cost_micro_usd or 0) > cost:
                raise receipts.ReceiptError(
                    f"allocation {alloc.id}: paid {alloc.cost_micro_usd} micro-USD, "
                    f"more than its usage receipt attests ({cost})"
                )
            if (alloc.id, "acceptance") in stored:
                receipts.verify(
                    stored[(alloc.id, "acceptance")], "acceptance", facts, _finder(keys)
                )
        except receipts.ReceiptError as exc:
            problems.append(str(exc))
    return problems


def _audit_holds_and_capacity(s: Session) -> list[str]:
    """No hold without an owner, no owner without its hold, no GPU booked twice or lost."""
    problems = []
    open_holds = set(s.execute(ledger_open_holds()).scalars())
    owners: dict[int, str] = {}
    for job_id, hold_id in s.execute(
        select(Job.id, Job.hold_transfer_id).where(Job.state == "pending")
    ):
        owners[hold_id] = f"pending job {job_id}"
    active = s.execute(
        select(
            Allocation.id, Allocation.hold_transfer_id, Allocation.node_id, Allocation.gpus
        ).where(Allocation.state.in_(ALLOCATION_ACTIVE_STATES))
    ).all()
    booked: dict[int, int] = {}
    for alloc_id, hold_id, node_id, gpus in active:
        owners[hold_id] = f"allocation {alloc_id}"
        booked[node_id] = booked.get(node_id, 0) + gpus
    for hold_id, owner in owners.items():
        if hold_id not in open_holds:
            problems.append(f"{owner} has no open hold (#{hold_id}): its money is not held")
    for hold_id in sorted(open_holds - owners.keys()):
        problems.append(
            f"hold #{hold_id} is open but belongs to no pending job or running allocation"
        )
    for node_id, gpus, free in s.execute(select(Node.id, Node.gpus, Node.gpus_free)):
        if gpus - free != booked.get(node_id, 0):
            held = booked.get(node_id, 0)
            problems.append(f"node {node_id}: {gpus - free} GPU(s) booked, allocations hold {held}")
    return problems


def _end_job_if_done(s: Session, job: Job, spec: JobSpec) -> None:
    """A job ends when its last allocation does: succeeded only if every replica did."""
    s.flush()
    rows = s.execute(
        select(Allocation.state, Allocation.error)
        .where(Allocation.job_id == job.id)
        .order_by(Allocation.id)  # the last attempt decides a single-replica job
    ).all()
    states = [state for state, _ in rows]
    if any(state in ALLOCATION_ACTIVE_STATES for state in states):
        return
    if spec.replicas == 1:
        final = states[-1] if states[-1] in ("succeeded", "failed") else "failed"
    else:
        final = "succeeded" if all(state == "succeeded" for state in states) else "failed"
        lost = next((error for state, error in rows if state == "lost"), None)
        if final == "failed" and lost is not None:
            job.reasons_json = json.dumps(
                [f"a replica was lost ({lost}); replicas are all or none"]
            )
    now = utcnow()
    job.state, job.ended_at, job.updated_at = final, now, now


def _expire_holds(s: Session, ledger: Ledger, now: datetime) -> list[int]:
    """Void holds past their timeout; returns the allocations that were given up on.

    A job's submission hold times out when it was never scheduled: the job is
    cancelled and refunded. An allocation's hold times out when its work ran
    an hour past its time limit without being settled: it is treated as lost.
    """
    lost = []
    for hold in ledger.expired_holds(now):
        alloc = s.get(Allocation, hold.allocation_id) if hold.allocation_id else None
        job = s.get(Job, hold.job_id) if hold.job_id else None
        if alloc is not None and job is not None and alloc.state in ALLOCATION_ACTIVE_STATES:
            _requeue(s, ledger, alloc, job, "hold timed out")
            lost.append(alloc.id)
            continue
        ledger.void(hold, memo=f"hold #{hold.id} timed out")
        if job is not None and job.state == "pending" and job.hold_transfer_id == hold.id:
            job.state, job.ended_at, job.updated_at = "cancelled", now, now
            job.reasons_json = json.dumps(
                ["not scheduled before its hold timed out; hold returned"]
            )
    return lost


def _requeue(
    s: Session,
    ledger: Ledger,
    alloc: Allocation,
    job: Job,
    reason: str,
    spec: JobSpec | None = None,
) -> None:
    """An allocation lost with its node or driver: free it, refund it, queue the job again.

    Only a single-replica job is queued again. Replicas are all or none, so a
    multi-replica job that loses one fails once its last replica has ended, as
    ``finish`` decides; each lost replica's own hold is voided, none is opened.
    """
    hold = ledger.pending_transfer(alloc.hold_transfer_id or 0)
    ledger.void(hold, memo=f"job {job.id}: allocation {alloc.id} lost ({reason})")
    registry.release_capacity(s, alloc.node_id, alloc.gpus)
    now = utcnow()
    alloc.state, alloc.ended_at, alloc.error = "lost", now, reason[:500]
    spec = spec or _spec_of(s, job.id)
    if spec.replicas > 1:
        _end_job_if_done(s, job, spec)
        return
    if ledger.balance(job.account_id).available < job.max_cost_micro_usd:
        job.state, job.ended_at, job.updated_at = "failed", now, now
        job.reasons_json = json.dumps(
            [f"{reason}; not requeued: the balance no longer covers the hold"]
        )
        return
    job.hold_transfer_id = ledger.transfer(
        job.account_id,
        hold.credit_account_id,
        job.max_cost_micro_usd,
        "hold",
        pending=True,
        job_id=job.id,
        memo=f"job {job.id}: requeued after {reason}",
        timeout_at=now + timedelta(seconds=PENDING_HOLD_TIMEOUT_S),
    )
    job.state, job.updated_at, job.plan_record_id = "pending", now, None
