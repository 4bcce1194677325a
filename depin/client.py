"""The Python SDK: one interface over a local (in-process) Marketplace.

    from depin import Client, load_job
    client = Client()                       # DEPIN_HOME, DEPIN_DATABASE_URL, DEPIN_RAY_ADDRESS
    job = client.submit_file("job.yaml", account="alice")
    job = client.wait(job.id)               # drives a scheduler cycle while no scheduler runs

Keys live on the client's machine (``DEPIN_HOME/keys``); the Marketplace only
ever sees public keys and signed envelopes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from depin import keys as keystore
from depin import manifest
from depin.config import Settings
from depin.errors import DatabaseError, InputError, NotFoundError
from depin.keys import KeyInfo
from depin.ledger import Balance, VerifyReport
from depin.manifest import Claims, Envelope
from depin.market import Marketplace
from depin.money import usd_to_micro
from depin.spec import (
    JobSpec,
    NodeSpec,
    describe_validation_error,
    job_from_data,
    parse_yaml,
    read_manifest_text,
)
from depin.views import AccountView, JobView, KeyView, NodeView
from scheduler.search import Hit

T = TypeVar("T")
WAIT_POLL_S = 0.5
RETRIES = 3  # attempts of a state-changing call on transient database errors


class Client:
    """Submit, watch and pay for work on a depin marketplace."""

    def __init__(
        self,
        *,
        home: str | Path | None = None,
        database_url: str | None = None,
        ray_address: str | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(
            home=home, database_url=database_url, ray_address=ray_address
        )
        self._market: Marketplace | None = None

    @property
    def market(self) -> Marketplace:
        """The Marketplace, opened (and migrated) on first use."""
        if self._market is None:
            self._market = Marketplace(self.settings)
        return self._market

    @property
    def market_id(self) -> str:
        return self.market.market_id

    def close(self) -> None:
        if self._market is not None:
            self._market.close()
            self._market = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys (local files) --------------------------------------------------------------------
    def new_key(self, name: str) -> KeyInfo:
        self.settings.ensure_home()
        return keystore.generate(name, self.settings.keys_dir)

    def local_keys(self) -> list[KeyInfo]:
        return keystore.list_keys(self.settings.keys_dir)

    def public_key(self, key: str) -> Ed25519PublicKey:
        return keystore.load_public(key, self.settings.keys_dir)

    def rotate_key(
        self, account: str, *, revoke_old: bool = False, expires_in_days: int | None = None
    ) -> tuple[KeyInfo, list[KeyView]]:
        """Make a new local key for ``account``, register it, optionally revoke the others.

        Returns the new key and the keys revoked.
        """
        old = [k for k in self.market.keys_of(account) if k.state == "active"]
        names = {k.name for k in self.local_keys()}
        n = 2
        while f"{account}-{n}" in names:
            n += 1
        info = self.new_key(f"{account}-{n}")
        not_after = None
        if expires_in_days is not None:
            not_after = datetime.now(UTC) + timedelta(days=expires_in_days)
        self.market.add_key(account, self.public_key(info.name), not_after=not_after)
        revoked = [self.market.revoke_key(k.key_id) for k in old] if revoke_old else []
        return info, revoked

    def revoke_key(self, key: str) -> KeyView:
        """Revoke a registered key, given its id or the name of a local key."""
        local = {k.name: k.key_id for k in self.local_keys()}
        return self.market.revoke_key(local.get(key, key))

    def registered_keys(self, account: str) -> list[KeyView]:
        return self.market.keys_of(account)

    def _retrying(self, call: Callable[[str], T], key: str | None) -> T:
        """Call with an idempotency key (a fresh UUID unless given), retried on transient failures.

        A retry reuses the key, so a request that committed before its answer
        was lost returns the first result instead of acting twice.
        """
        key = uuid.uuid4().hex if key is None else key
        for attempt in range(1, RETRIES + 1):
            try:
                return call(key)
            except DatabaseError:
                if attempt == RETRIES:
                    raise
                time.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    # -- accounts ------------------------------------------------------------------------------
    def create_account(
        self, name: str, *, key: str, kind: str = "developer", idempotency_key: str | None = None
    ) -> AccountView:
        public = self.public_key(key)
        return self._retrying(
            lambda k: self.market.create_account(name, public, kind=kind, idempotency_key=k),
            idempotency_key,
        )

    def register_provider(
        self, name: str, *, key: str, idempotency_key: str | None = None
    ) -> AccountView:
        return self.create_account(name, key=key, kind="provider", idempotency_key=idempotency_key)

    def deposit(
        self, account: str, usd: Decimal | str | int, *, idempotency_key: str | None = None
    ) -> Balance:
        micro = usd_to_micro(usd)
        return self._retrying(
            lambda k: self.market.deposit(account, micro, idempotency_key=k), idempotency_key
        )

    def account(self, name: str) -> AccountView:
        return self.market.account(name)

    def balances(self, account: str | None = None) -> list[Balance]:
        return self.market.balances(account)

    # -- nodes ---------------------------------------------------------------------------------
    def add_node(
        self, spec: NodeSpec | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> NodeView:
        """Register a node: a NodeSpec, or its fields as keyword arguments."""
        if spec is None:
            spec = _validated(NodeSpec, fields, "node")
        node = spec
        return self._retrying(
            lambda k: self.market.add_node(node, idempotency_key=k), idempotency_key
        )

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Register many nodes at once (all or none); returns their ids."""
        return self.market.add_nodes(specs)

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        """Free capacity that could take ``request`` now, best first."""
        return self.market.search(request, sort=sort, limit=limit)

    def nodes(self) -> list[NodeView]:
        return self.market.nodes()

    # -- manifests -----------------------------------------------------------------------------
    def sign(
        self,
        spec: JobSpec,
        *,
        key: str,
        account: str | None = None,
        audience: str | None = None,
        ttl_s: int = manifest.DEFAULT_TTL_S,
    ) -> Envelope:
        """Sign ``spec`` with a local key for ``account`` (default: the key's account)."""
        private = keystore.load_private(key, self.settings.keys_dir)
        if account is None:
            kid = keystore.key_id(private.public_key())
            account = self.market.account_for_key(kid)
            if account is None:
                raise NotFoundError(
                    f"key {key!r} ({kid}) is not registered to any account: "
                    "pass --as ACCOUNT or register it with `depin account create`"
                )
        return manifest.sign(
            spec, private, issuer=account, audience=audience or self.market_id, ttl_s=ttl_s
        )

    def verify_envelope(self, envelope: Envelope) -> tuple[str, Claims]:
        """Check an envelope's signature offline; returns the signing key id and the claims.

        Keys are looked up among local public keys, then the marketplace's registered keys.
        """
        local = {k.key_id: self.public_key(k.name) for k in self.local_keys()}

        def find(kid: str) -> list[Ed25519PublicKey]:
            found = local.get(kid) or self.market.registered_key(kid)
            return [found] if found is not None else []

        signature, _ = manifest.verify_signature(envelope, find)
        return signature.keyid, manifest.parse_claims(envelope)

    def signing_key_for(self, account: str) -> str:
        """The newest local key registered, and active, for ``account`` (its name in keys/)."""
        active = {k.key_id for k in self.market.keys_of(account) if k.state == "active"}
        local = [k for k in self.local_keys() if k.key_id in active and k.path.exists()]
        if not local:
            raise NotFoundError(
                f"no active private key for account {account!r} in {self.settings.keys_dir}: "
                f"make one with `depin keys rotate {account}`, or sign elsewhere and submit "
                "the envelope"
            )
        order = {k.key_id: i for i, k in enumerate(self.market.keys_of(account))}
        return max(local, key=lambda k: order[k.key_id]).name

    def default_account(self) -> str:
        """The one account a local key is registered to, when there is exactly one."""
        accounts = {
            a for k in self.local_keys() if (a := self.market.account_for_key(k.key_id)) is not None
        }
        developers = sorted(a for a in accounts if self.account(a).kind == "developer")
        if len(developers) != 1:
            found = ", ".join(developers) or "none"
            raise InputError(
                f"say which account submits with --as ACCOUNT (local accounts: {found})"
            )
        return developers[0]

    # -- jobs ----------------------------------------------------------------------------------
    def submit(
        self,
        job: JobSpec | Envelope,
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        """Submit a signed envelope, or sign a JobSpec with the account's local key first."""
        if isinstance(job, Envelope):
            envelope = job
            _check_issuer(envelope, account)
        else:
            account = account or self.default_account()
            envelope = self.sign(job, key=key or self.signing_key_for(account), account=account)
        return self._retrying(
            lambda k: self.market.submit(envelope, idempotency_key=k), idempotency_key
        )

    def submit_many(
        self,
        jobs: Sequence[JobSpec | Envelope],
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Sign (where needed) and submit many jobs in one transaction, all or none; returns ids."""
        envelopes = [j for j in jobs if isinstance(j, Envelope)]
        for envelope in envelopes:
            _check_issuer(envelope, account)
        if len(envelopes) < len(jobs):
            account = account or self.default_account()
            private = keystore.load_private(
                key or self.signing_key_for(account), self.settings.keys_dir
            )
            audience = self.market_id
            envelopes = [
                j
                if isinstance(j, Envelope)
                else manifest.sign(j, private, issuer=account, audience=audience)
                for j in jobs
            ]
        return self._retrying(
            lambda k: self.market.submit_many(envelopes, idempotency_key=k), idempotency_key
        )

    def submit_file(
        self, path: str | Path, *, account: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        """Submit a YAML manifest (signed here) or a JSON envelope signed elsewhere."""
        return self.submit(load_submission(path), account=account, idempotency_key=idempotency_key)

    def place(self, job_id: int, node_id: int, *, idempotency_key: str | None = None) -> list[int]:
        """Reserve a pending job on a node of your choosing; refused if the node lacks room."""
        return self._retrying(
            lambda k: self.market.place(job_id, node_id, idempotency_key=k), idempotency_key
        )

    def jobs(
        self, *, account: str | None = None, state: str | None = None, limit: int = 100
    ) -> list[JobView]:
        return self.market.jobs(account=account, state=state, limit=limit)

    def job(self, job_id: int) -> JobView:
        return self.market.job(job_id)

    def explain(self, job_id: int) -> dict[str, Any]:
        return self.market.explain(job_id)

    def wait(self, job_id: int, *, timeout_s: float | None = None) -> JobView:
        """Wait until the job ends.

        While a ``depin scheduler run`` is alive this only watches; otherwise it
        drives scheduling and Ray itself for this job, as long as it waits.
        """
        from scheduler.loop import Driver  # Ray is imported only by callers that run work

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.market.scheduler_running():
            while not (view := self.job(job_id)).terminal:
                if deadline is not None and time.monotonic() > deadline:
                    return view
                time.sleep(WAIT_POLL_S)
            return view
        with Driver(self.market, kind="submit", job_ids=[job_id]) as driver:
            driver.run(until=lambda: self.job(job_id).terminal, timeout_s=timeout_s)
        return self.job(job_id)

    # -- ledger --------------------------------------------------------------------------------
    def ledger_entries(
        self, *, account: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` ledger entries (of ``account``, or all), oldest of them first."""
        return self.market.ledger_entries(account=account, limit=limit)

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        return self.market.export_ledger()

    def verify_ledger(self) -> VerifyReport:
        return self.market.verify_ledger()


def load_submission(path: str | Path) -> JobSpec | Envelope:
    """A file to submit: a YAML JobSpec, or a JSON envelope already signed."""
    text = read_manifest_text(path)
    if manifest.looks_like_envelope(text):
        return Envelope.from_json(text)
    return job_from_data(parse_yaml(text, source=str(path)), source=str(path))


def _validated(model: type[NodeSpec], fields: dict[str, Any], what: str) -> NodeSpec:
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InputError(f"{what}: {describe_validation_error(exc)}") from None


def _check_issuer(envelope: Envelope, account: str | None) -> None:
    """``account`` (``--as``) names who signs a manifest; a signed envelope already says."""
    if account is None:
        return
    issuer = manifest.parse_claims(envelope).issuer
    if issuer != account:
        raise InputError(
            f"the envelope is signed for account {issuer!r}, not {account!r}: "
            "submit it without --as, or sign the manifest as that account"
        )
