"""The Python SDK over asyncio: ``depin.AsyncClient``, the ``Client``'s methods as coroutines.

    from depin import AsyncClient
    async with AsyncClient(url="http://coordinator:8420") as client:   # or DEPIN_API_URL
        job = await client.submit_file("job.yaml", account="alice")
        jobs = await asyncio.gather(*(client.submit(spec) for spec in specs))
        job = await client.wait(job.id)

It reaches a market over HTTP only: an embedded market is a database in this
process, and that is the synchronous ``depin.Client``'s. Everything but the
waiting is shared with ``Client``: the calls, requests, paging and the reading
of answers (``depin.api.remote``, whose ``AsyncHttpMarket`` this drives), the
steps between them (``depin.client``: which key signs, signing, checking an
envelope's issuer), the results (``depin.views``) and the errors (the same
``DepinError`` classes). Each method here is its ``Client`` twin with ``await``.
Keys stay on this machine, as with ``Client``: ``new_key``, ``local_keys`` and
``public_key`` read files, so they stay synchronous.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from depin import keys as keystore
from depin import manifest
from depin.api.remote import AsyncHttpMarket
from depin.client import (
    WAIT_POLL_S,
    EnvelopeCheck,
    LocalKeys,
    account_of_key,
    check_signed_as,
    checked_envelope,
    checked_offline,
    job_state,
    key_expiry,
    key_id_of,
    load_submission,
    next_key_name,
    node_spec,
    sign_all,
    signature_ids,
    signing_identity,
    verified_envelope,
)
from depin.config import Settings
from depin.errors import ConfigError
from depin.keys import KeyInfo
from depin.ledger import Balance, VerifyReport
from depin.manifest import Claims, Envelope
from depin.money import usd_to_micro
from depin.spec import JobSpec, NodeSpec
from depin.states import JobState
from depin.views import (
    AccountView,
    AllocationView,
    EntryView,
    ExplainView,
    JobView,
    KeyView,
    NodeView,
)
from scheduler.search import Hit

T = TypeVar("T")


class AsyncClient(LocalKeys):
    """Submit, watch and pay for work on a depin market served over HTTP, from asyncio."""

    def __init__(
        self,
        *,
        url: str | None = None,
        home: str | Path | None = None,
        account: str | None = None,
        settings: Settings | None = None,
        market: AsyncHttpMarket | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env(home=home, api_url=url, account=account)
        if market is None and self.settings.api_url is None:
            raise ConfigError(
                "AsyncClient reaches a market over HTTP: pass url= or set DEPIN_API_URL "
                "(an embedded market is synchronous: use depin.Client)"
            )
        self._market = market

    @property
    def market(self) -> AsyncHttpMarket:
        """The market over HTTP, its connection pool opened on first use."""
        if self._market is None:
            assert self.settings.api_url is not None
            self._market = AsyncHttpMarket(
                self.settings.api_url, self.settings.keys_dir, account=self.settings.account
            )
        return self._market

    async def market_id(self) -> str:
        """The audience every envelope for this market is signed for (asked once)."""
        return await self.market.market_id()

    async def aclose(self) -> None:
        if self._market is not None:
            await self._market.aclose()
            self._market = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- keys (new_key, local_keys, public_key: local files, from LocalKeys) -------------------
    async def rotate_key(
        self, account: str, *, revoke_old: bool = False, expires_in_days: int | None = None
    ) -> tuple[KeyInfo, list[KeyView]]:
        """Make a new local key for ``account`` and register it (see ``Client.rotate_key``)."""
        await self.market.account(account)  # a typo fails before a key file is made
        info = self.new_key(next_key_name(account, self.local_keys()))
        _, revoked = await self.market.rotate_key(
            account,
            self.public_key(info.name),
            not_after=key_expiry(expires_in_days),
            revoke_old=revoke_old,
        )
        return info, revoked

    async def revoke_key(self, key: str) -> KeyView:
        """Revoke a registered key, given its id or the name of a local key."""
        return await self.market.revoke_key(key_id_of(key, self.local_keys()))

    async def registered_keys(self, account: str) -> list[KeyView]:
        return await self.market.keys_of(account)

    async def _retrying(self, call: Callable[[str], Awaitable[T]], key: str | None) -> T:
        """Call with an idempotency key (a fresh UUID unless given). The HTTP transport
        retries what is safe to repeat, under that one key (``depin.api.remote``); retrying
        again here would multiply the attempts."""
        return await call(uuid.uuid4().hex if key is None else key)

    # -- accounts ------------------------------------------------------------------------------
    async def create_account(
        self, name: str, *, key: str, kind: str = "developer", idempotency_key: str | None = None
    ) -> AccountView:
        public = self.public_key(key)
        return await self._retrying(
            lambda k: self.market.create_account(name, public, kind=kind, idempotency_key=k),
            idempotency_key,
        )

    async def register_provider(
        self, name: str, *, key: str, idempotency_key: str | None = None
    ) -> AccountView:
        return await self.create_account(
            name, key=key, kind="provider", idempotency_key=idempotency_key
        )

    async def deposit(
        self, account: str, usd: Decimal | str | int, *, idempotency_key: str | None = None
    ) -> Balance:
        micro = usd_to_micro(usd)
        return await self._retrying(
            lambda k: self.market.deposit(account, micro, idempotency_key=k), idempotency_key
        )

    async def account(self, name: str) -> AccountView:
        return await self.market.account(name)

    async def balances(self, account: str | None = None) -> list[Balance]:
        return await self.market.balances(account)

    # -- nodes ---------------------------------------------------------------------------------
    async def add_node(
        self, spec: NodeSpec | None = None, *, idempotency_key: str | None = None, **fields: Any
    ) -> NodeView:
        """Register a node: a NodeSpec, or its fields as keyword arguments."""
        node = spec if spec is not None else node_spec(fields)
        return await self._retrying(
            lambda k: self.market.add_node(node, idempotency_key=k), idempotency_key
        )

    async def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        """Register many nodes at once (all or none, per provider); returns their ids."""
        return await self.market.add_nodes(specs)

    async def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        """Free capacity that could take ``request`` now, best first."""
        return await self.market.search(request, sort=sort, limit=limit)

    async def nodes(self) -> list[NodeView]:
        return await self.market.nodes()

    # -- manifests -----------------------------------------------------------------------------
    async def sign(
        self,
        spec: JobSpec,
        *,
        key: str,
        account: str | None = None,
        audience: str | None = None,
        ttl_s: int = manifest.DEFAULT_TTL_S,
    ) -> Envelope:
        """Sign ``spec`` with a local key for ``account`` (default: the key's account).

        The key never leaves this machine; the market is asked only whose the key
        is (without ``account``) and its id (without ``audience``).
        """
        private = keystore.load_private(key, self.settings.keys_dir)
        if account is None:
            kid = keystore.key_id(private.public_key())
            account = account_of_key(await self.market.registered_keys([kid]), key, kid)
        return manifest.sign(
            spec, private, issuer=account, audience=audience or await self.market_id(), ttl_s=ttl_s
        )

    async def verify_envelope(self, envelope: Envelope, *, offline: bool = False) -> EnvelopeCheck:
        """Check an envelope's signature, and (unless ``offline``) who may have signed it
        (see ``Client.verify_envelope``)."""
        if offline:
            local = {k.key_id: self.public_key(k.name) for k in self.local_keys()}
            return checked_offline(envelope, local)
        key, claims = await self._verified(envelope)
        return checked_envelope(key, claims, await self.market_id())

    async def _verified(self, envelope: Envelope) -> tuple[KeyView, Claims]:
        registered = await self.market.registered_keys(signature_ids(envelope))
        return verified_envelope(envelope, registered)

    async def _signing_identity(self, account: str | None) -> tuple[str, str]:
        local = [k for k in self.local_keys() if k.path.exists()]
        registered = await self.market.registered_keys([k.key_id for k in local])
        return signing_identity(local, registered, account, self.settings.keys_dir)

    async def signing_key_for(self, account: str) -> str:
        """The newest local key registered, and active, for ``account`` (its name in keys/)."""
        return (await self._signing_identity(account))[1]

    async def default_account(self) -> str:
        """The one developer account a local key is registered to, when there is exactly one."""
        return (await self._signing_identity(None))[0]

    # -- jobs ----------------------------------------------------------------------------------
    async def submit(
        self,
        job: JobSpec | Envelope,
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobView:
        """Submit a signed envelope, or sign a JobSpec with the account's local key first."""
        envelope = (await self._signed([job], account=account, key=key))[0]
        return await self._retrying(
            lambda k: self.market.submit(envelope, idempotency_key=k), idempotency_key
        )

    async def submit_many(
        self,
        jobs: Sequence[JobSpec | Envelope],
        *,
        account: str | None = None,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        """Sign (where needed) and submit many jobs in one transaction, all or none; returns ids."""
        envelopes = await self._signed(jobs, account=account, key=key)
        return await self._retrying(
            lambda k: self.market.submit_many(envelopes, idempotency_key=k), idempotency_key
        )

    async def _signed(
        self, jobs: Sequence[JobSpec | Envelope], *, account: str | None, key: str | None
    ) -> list[Envelope]:
        """Envelopes for ``jobs``: specs signed here, envelopes signed elsewhere checked first
        (see ``Client._signed``)."""
        if account is not None:
            for envelope in (j for j in jobs if isinstance(j, Envelope)):
                check_signed_as((await self._verified(envelope))[1], account)
        if all(isinstance(j, Envelope) for j in jobs):
            return list(jobs)  # type: ignore[arg-type]
        if key is None:
            account, key = await self._signing_identity(account)
        elif account is None:
            account = (await self._signing_identity(None))[0]
        private = keystore.load_private(key, self.settings.keys_dir)
        return sign_all(jobs, private, issuer=account, audience=await self.market_id())

    async def submit_file(
        self, path: str | Path, *, account: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        """Submit a YAML manifest (signed here) or a JSON envelope signed elsewhere."""
        job = load_submission(path)
        return await self.submit(job, account=account, idempotency_key=idempotency_key)

    async def place(
        self, job_id: int, node_id: int, *, idempotency_key: str | None = None
    ) -> list[int]:
        """Reserve a pending job on a node of your choosing; refused if the node lacks room."""
        return await self._retrying(
            lambda k: self.market.place(job_id, node_id, idempotency_key=k), idempotency_key
        )

    async def jobs(
        self, *, account: str | None = None, state: JobState | str | None = None, limit: int = 100
    ) -> list[JobView]:
        wanted = None if state is None else job_state(state)
        return await self.market.jobs(account=account, state=wanted, limit=limit)

    async def job(self, job_id: int) -> JobView:
        return await self.market.job(job_id)

    async def explain(self, job_id: int) -> ExplainView:
        return await self.market.explain(job_id)

    async def cancel(self, job_id: int) -> JobView:
        """Cancel a job: at once unless it runs, else once its node has stopped it."""
        return await self.market.cancel(job_id)

    async def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]:
        """The allocations on a node, newest first: what its provider may read."""
        return await self.market.allocations(node_id, limit=limit)

    async def wait(self, job_id: int, *, timeout_s: float | None = None) -> JobView:
        """Watch the job until it ends (the market's own scheduler runs it); after
        ``timeout_s`` its view as it is then."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not (view := await self.job(job_id)).terminal:
            if deadline is not None and time.monotonic() > deadline:
                return view
            await asyncio.sleep(WAIT_POLL_S)
        return view

    # -- ledger --------------------------------------------------------------------------------
    async def ledger_entries(
        self, *, account: str | None = None, limit: int = 100
    ) -> list[EntryView]:
        """The newest ``limit`` ledger entries (of ``account``, or all), oldest of them first."""
        return await self.market.ledger_entries(account=account, limit=limit)

    def export_ledger(self) -> AsyncIterator[dict[str, Any]]:
        """Every entry with its hashes, streamed: ``async for entry in client.export_ledger()``."""
        return self.market.export_ledger()

    async def verify_ledger(self) -> VerifyReport:
        return await self.market.verify_ledger()
