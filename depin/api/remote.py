"""The ``Market`` protocol over HTTP: what ``depin.Client(url=...)`` talks to.

    Calls         one builder per market operation: HTTP method, path, body, who signs
                  it and what comes back; shared by the sync and the async market
    KeyRing       the local private keys, and which account each is registered to
    HttpMarket    the protocol over ``httpx.Client``
    AsyncHttpMarket  the same operations over ``httpx.AsyncClient``

Every request that needs one is signed (RFC 9421, ``Ed25519Auth``) with the
newest active local key of the account it acts for; a retry is signed anew
(a new nonce) under the same ``Idempotency-Key``. Private keys never leave
this machine. Errors come back as the same ``DepinError`` classes the
market raised (``depin.api.problems``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from depin import keys as keystore
from depin import manifest
from depin.api import problems, wire
from depin.api.signing import Ed25519Auth
from depin.errors import DepinError, InputError, NotFoundError, RemoteError
from depin.ledger import Balance, VerifyReport
from depin.manifest import Envelope
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

ATTEMPTS = 4  # tries of a request that is safe to repeat (a GET, or a POST with a key)
BACKOFF_S = 0.2  # before retry n: this x 2**(n-1)
TIMEOUT = httpx.Timeout(30.0, connect=5.0)
RETRY_STATUS = frozenset({502, 503, 504})

# Who signs a call: nobody, an account (its newest active local key), the operator's key,
# a key given by id (the one a new account registers), or the acting account.
PUBLIC, OPERATOR, ACTING = "public", "operator", "acting"


@dataclass(frozen=True, slots=True)
class Call:
    """One HTTP request of a market operation, and how to read its answer."""

    method: str
    path: str
    returns: Any = None  # a type pydantic validates the body into; None: nothing
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    signer: str = PUBLIC  # PUBLIC, OPERATOR, ACTING, "account:<name>" or "key:<id>"
    idempotency_key: str | None = None

    @property
    def repeatable(self) -> bool:
        return self.method == "GET" or self.idempotency_key is not None

    def page(self, cursor: str | None) -> Call:
        params = dict(self.params)
        if cursor is not None:
            params["cursor"] = cursor
        return Call(self.method, self.path, self.returns, params, self.json, self.signer)


def _as(account: str) -> str:
    return f"account:{account}"


def _key(kid: str) -> str:
    return f"key:{kid}"


class Calls:
    """The market's operations as HTTP calls: one definition for both transports."""

    @staticmethod
    def market_info() -> Call:
        return Call("GET", wire.MARKET, wire.MarketInfo)

    @staticmethod
    def scheduler_running() -> Call:
        return Call("GET", wire.SCHEDULER, wire.Running)

    @staticmethod
    def create_account(
        name: str, public_key: Ed25519PublicKey, kind: str, idempotency_key: str | None
    ) -> Call:
        body = wire.NewAccount(name=name, kind=kind, public_key=keystore.public_key_b64(public_key))
        signer = _key(keystore.key_id(public_key))  # proof of possession
        return Call(
            "POST",
            wire.ACCOUNTS,
            AccountView,
            json=body.model_dump(),
            signer=signer,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def deposit(name: str, micro: int, idempotency_key: str | None) -> Call:
        return Call(
            "POST",
            wire.DEPOSITS.format(name=name),
            Balance,
            json={"micro_usd": micro},
            signer=OPERATOR,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def account(name: str) -> Call:
        return Call("GET", wire.ACCOUNT.format(name=name), AccountView, signer=_as(name))

    @staticmethod
    def balances(account: str | None) -> Call:
        params = {} if account is None else {"account": account}
        signer = ACTING if account is None else _as(account)
        return Call("GET", wire.BALANCES, wire.Page[Balance], params, signer=signer)

    @staticmethod
    def registered_keys(key_ids: Sequence[str]) -> Call:
        return Call("GET", wire.KEYS, list[KeyView], {"key_id": list(key_ids)})

    @staticmethod
    def keys_of(account: str) -> Call:
        return Call(
            "GET", wire.ACCOUNT_KEYS.format(name=account), list[KeyView], signer=_as(account)
        )

    @staticmethod
    def rotate_key(
        account: str, public_key: Ed25519PublicKey, not_after: datetime | None, revoke_old: bool
    ) -> Call:
        body = wire.NewKey(
            public_key=keystore.public_key_b64(public_key),
            not_after=not_after,
            revoke_old=revoke_old,
        )
        return Call(
            "POST",
            wire.ACCOUNT_KEYS.format(name=account),
            wire.Rotated,
            json=body.model_dump(mode="json"),
            signer=_as(account),
        )

    @staticmethod
    def revoke_key(key_id: str, account: str) -> Call:
        return Call("POST", wire.KEY_REVOCATION.format(key_id=key_id), KeyView, signer=_as(account))

    @staticmethod
    def add_node(spec: NodeSpec, idempotency_key: str | None) -> Call:
        return Call(
            "POST",
            wire.NODES,
            NodeView,
            json=spec.model_dump(mode="json"),
            signer=_as(spec.provider),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def add_nodes(specs: Sequence[NodeSpec]) -> Call:
        body = [s.model_dump(mode="json") for s in specs]
        return Call("POST", wire.NODE_BATCH, wire.NodeIds, json=body, signer=_as(specs[0].provider))

    @staticmethod
    def nodes() -> Call:
        return Call("GET", wire.NODES, wire.Page[NodeView], {"limit": wire.MAX_PAGE})

    @staticmethod
    def search(request: JobSpec, sort: str, limit: int) -> Call:
        body = wire.Search(request=request.to_json_dict(), sort=sort, limit=limit)  # type: ignore[arg-type]
        return Call("POST", wire.OFFERS, list[Hit], json=body.model_dump())

    @staticmethod
    def submit(envelope: Envelope, issuer: str, idempotency_key: str | None) -> Call:
        return Call(
            "POST",
            wire.JOBS,
            JobView,
            json=envelope.to_dict(),
            signer=_as(issuer),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def submit_many(
        envelopes: Sequence[Envelope], issuer: str, idempotency_key: str | None
    ) -> Call:
        body = {"envelopes": [e.to_dict() for e in envelopes]}
        return Call(
            "POST",
            wire.JOB_BATCH,
            wire.JobIds,
            json=body,
            signer=_as(issuer),
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def jobs(account: str | None, state: JobState | None, limit: int) -> Call:
        params: dict[str, Any] = {"limit": min(limit, wire.MAX_PAGE)}
        if account is not None:
            params["account"] = account
        if state is not None:
            params["state"] = str(state)
        signer = ACTING if account is None else _as(account)
        return Call("GET", wire.JOBS, wire.Page[JobView], params, signer=signer)

    @staticmethod
    def job(job_id: int) -> Call:
        return Call("GET", wire.JOB.format(job_id=job_id), JobView, signer=ACTING)

    @staticmethod
    def explain(job_id: int) -> Call:
        return Call("GET", wire.JOB_EXPLAIN.format(job_id=job_id), ExplainView, signer=ACTING)

    @staticmethod
    def place(job_id: int, node_id: int, idempotency_key: str | None) -> Call:
        return Call(
            "POST",
            wire.JOB_PLACEMENT.format(job_id=job_id),
            wire.AllocationIds,
            json={"node_id": node_id},
            signer=ACTING,
            idempotency_key=idempotency_key,
        )

    @staticmethod
    def cancel(job_id: int) -> Call:
        return Call("POST", wire.JOB_CANCEL.format(job_id=job_id), JobView, signer=ACTING)

    @staticmethod
    def allocations(node_id: int, provider: str, limit: int) -> Call:
        return Call(
            "GET",
            wire.NODE_ALLOCATIONS.format(node_id=node_id),
            wire.Page[AllocationView],
            {"limit": min(limit, wire.MAX_PAGE)},
            signer=_as(provider),
        )

    @staticmethod
    def ledger_entries(account: str | None, limit: int) -> Call:
        params: dict[str, Any] = {"limit": min(limit, wire.MAX_PAGE)}
        if account is not None:
            params["account"] = account
        signer = ACTING if account is None else _as(account)
        return Call("GET", wire.ENTRIES, wire.Page[EntryView], params, signer=signer)

    @staticmethod
    def verify_ledger() -> Call:
        return Call("GET", wire.LEDGER_VERIFY, VerifyReport, signer=ACTING)


class KeyRing:
    """The local private keys, and which accounts they are registered to (asked once)."""

    def __init__(
        self,
        keys_dir: Path,
        lookup: Callable[[list[str]], list[KeyView]],
        account: str | None = None,
    ) -> None:
        self.keys_dir = keys_dir
        self.lookup = lookup
        self.account = account  # the acting account, when the caller named one
        self._registered: list[KeyView] | None = None
        self._files: dict[str, keystore.KeyInfo] | None = None
        self._loaded: dict[str, Ed25519PrivateKey] = {}  # read once: a request signs with one
        self.operator_key_id: str | None = None

    def _local(self) -> dict[str, keystore.KeyInfo]:
        """The local key files by id (listed once; again after ``forget``)."""
        if self._files is None:
            self._files = {
                k.key_id: k for k in keystore.list_keys(self.keys_dir) if k.path.exists()
            }
        return self._files

    def registered(self) -> list[KeyView]:
        if self._registered is None:
            local = self._local()
            self._registered = self.lookup(list(local)) if local else []
        return self._registered

    def forget(self) -> None:
        """Keys changed (made, registered, rotated, revoked): look again next time."""
        self._registered = self._files = None

    def private(self, key_id: str) -> Ed25519PrivateKey:
        if key_id not in self._loaded:
            info = self._local().get(key_id)
            if info is None:
                self._files = None  # perhaps made since: list the folder again
                info = self._local().get(key_id)
            if info is None:
                raise NotFoundError(f"no local private key {key_id} in {self.keys_dir}")
            self._loaded[key_id] = keystore.load_private(str(info.path), self.keys_dir)
        return self._loaded[key_id]

    def for_account(self, account: str) -> Ed25519PrivateKey:
        """The newest active local key registered to ``account``; else the operator's, if it is
        here (the operator may act for any account, as the embedded market lets it)."""
        usable = [k for k in self.registered() if k.account == account and k.state == "active"]
        if usable:
            return self.private(usable[-1].key_id)
        if self.has_operator():
            return self.operator()
        raise NotFoundError(
            f"no active private key of account {account!r} in {self.keys_dir}: requests "
            "for it are signed with its own key"
        )

    def has_operator(self) -> bool:
        """The market operator's key is one of the local keys (this is the coordinator)."""
        return self.operator_key_id is not None and self.operator_key_id in self._local()

    def operator(self) -> Ed25519PrivateKey:
        if not self.has_operator():
            raise NotFoundError(
                f"the market operator's key is not in {self.keys_dir}: deposits are signed "
                "by the operator (the coordinator's `depin init` made it as key 'operator')"
            )
        return self.private(self.operator_key_id)

    def acting(self) -> Ed25519PrivateKey:
        """The acting account's key: the one named; else the operator's, if it is here (on the
        coordinator a read sees every account, as the embedded market shows it); else the one
        account with a local key."""
        if self.account is not None:
            return self.for_account(self.account)
        if self.has_operator():
            return self.operator()
        accounts = sorted({k.account for k in self.registered() if k.state == "active"})
        developers = [a for a in accounts if _kind(self.registered(), a) == "developer"]
        chosen = developers if len(developers) == 1 else accounts
        if len(chosen) != 1:
            found = ", ".join(accounts) or "none"
            raise InputError(
                f"say which account asks with --as ACCOUNT or DEPIN_ACCOUNT (local: {found})"
            )
        return self.for_account(chosen[0])

    def resolve(self, signer: str) -> Ed25519PrivateKey | None:
        if signer == PUBLIC:
            return None
        if signer == OPERATOR:
            return self.operator()
        if signer == ACTING:
            return self.acting()
        kind, _, value = signer.partition(":")
        return self.private(value) if kind == "key" else self.for_account(value)


def _kind(keys: list[KeyView], account: str) -> str:
    return next(k.account_kind for k in keys if k.account == account)


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        document = response.json()
    except ValueError:
        document = None
    raise problems.error_of(document, response.status_code)


def _read(call: Call, response: httpx.Response) -> Any:
    _raise_for(response)
    if call.returns is None:
        return None
    try:
        return wire.adapter(call.returns).validate_python(response.json())
    except ValueError as exc:
        raise RemoteError(f"the market's answer to {call.method} {call.path} is malformed") from exc


class _Base:
    """What both markets share: the base URL, the key ring, the market's identity."""

    def __init__(self, url: str, keys_dir: Path, account: str | None) -> None:
        self.url = url.rstrip("/")
        self.keys = KeyRing(keys_dir, self._lookup, account)
        self._info: wire.MarketInfo | None = None

    def _lookup(self, key_ids: list[str]) -> list[KeyView]:
        raise NotImplementedError

    def _request(self, call: Call) -> dict[str, Any]:
        private = self.keys.resolve(call.signer)
        headers = {}
        if call.idempotency_key is not None:
            headers[wire.IDEMPOTENCY_HEADER] = call.idempotency_key
        return {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params,
            "json": call.json,
            "headers": headers,
            "auth": None if private is None else Ed25519Auth(private),
        }

    def _issuer(self, envelope: Envelope) -> str:
        """The account an envelope is verifiably signed for (its key's, checked here)."""
        wanted = [s.keyid for s in envelope.signatures]
        found = {k.key_id: k for k in self.keys.registered() if k.key_id in wanted}
        if not found:  # not one of ours: ask the market (the local ones are known already)
            found = {k.key_id: k for k in self._lookup(wanted)}

        def find(kid: str) -> list[Ed25519PublicKey]:
            return [keystore.public_key_from_b64(found[kid].public_key)] if kid in found else []

        signature, _ = manifest.verify_signature(envelope, find)
        return found[signature.keyid].account


class HttpMarket(_Base):
    """The market at ``url``, over ``httpx.Client`` (pass ``http`` to reuse or test one)."""

    def __init__(
        self,
        url: str,
        keys_dir: Path,
        *,
        account: str | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        super().__init__(url, keys_dir, account)
        self.http = http or httpx.Client(timeout=TIMEOUT)

    def close(self) -> None:
        self.http.close()

    def _lookup(self, key_ids: list[str]) -> list[KeyView]:
        found: list[KeyView] = []
        for start in range(0, len(key_ids), wire.MAX_LOOKUP_KEYS):
            found += self._do(Calls.registered_keys(key_ids[start : start + wire.MAX_LOOKUP_KEYS]))
        return found

    def _do(self, call: Call) -> Any:
        if call.signer != PUBLIC:
            self.info  # noqa: B018 (learns the operator's key id: it may be the one that signs)
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self.http.request(**self._request(call))
            except httpx.TransportError as exc:
                if not call.repeatable or attempt == ATTEMPTS:
                    raise RemoteError(f"cannot reach the market at {self.url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUS or not call.repeatable:
                    return _read(call, response)
                if attempt == ATTEMPTS:
                    return _read(call, response)
            time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def _pages(self, call: Call, limit: int | None = None) -> Iterator[Any]:
        cursor, seen = None, 0
        while True:
            page = self._do(call.page(cursor))
            for item in page.items:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    # -- the protocol ------------------------------------------------------------------------
    @property
    def info(self) -> wire.MarketInfo:
        if self._info is None:
            self._info = self._do(Calls.market_info())
            self.keys.operator_key_id = self._info.operator_key_id
        return self._info

    @property
    def market_id(self) -> str:
        return self.info.market_id

    def create_account(
        self,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        kind: str = "developer",
        idempotency_key: str | None = None,
    ) -> AccountView:
        view = self._do(Calls.create_account(name, public_key, kind, idempotency_key))
        self.keys.forget()
        return view  # type: ignore[no-any-return]

    def deposit(
        self, name: str, amount_micro_usd: int, *, idempotency_key: str | None = None
    ) -> Balance:
        return self._do(Calls.deposit(name, amount_micro_usd, idempotency_key))  # type: ignore[no-any-return]

    def account(self, name: str) -> AccountView:
        return self._do(Calls.account(name))  # type: ignore[no-any-return]

    def balances(self, account: str | None = None) -> list[Balance]:
        return list(self._pages(Calls.balances(account)))

    def registered_keys(self, key_ids: Sequence[str]) -> list[KeyView]:
        return self._lookup(list(key_ids))

    def keys_of(self, account: str) -> list[KeyView]:
        return self._do(Calls.keys_of(account))  # type: ignore[no-any-return]

    def rotate_key(
        self,
        account: str,
        public_key: Ed25519PublicKey,
        *,
        not_after: datetime | None = None,
        revoke_old: bool = False,
    ) -> tuple[KeyView, list[KeyView]]:
        done = self._do(Calls.rotate_key(account, public_key, not_after, revoke_old))
        self.keys.forget()
        return done.key, done.revoked

    def revoke_key(self, key_id: str) -> KeyView:
        found = self._lookup([key_id])
        if not found:
            raise NotFoundError(
                f"no registered key {key_id!r}: see `depin keys list --account NAME`"
            )
        view = self._do(Calls.revoke_key(key_id, found[0].account))
        self.keys.forget()
        return view  # type: ignore[no-any-return]

    def add_node(self, spec: NodeSpec, *, idempotency_key: str | None = None) -> NodeView:
        return self._do(Calls.add_node(spec, idempotency_key))  # type: ignore[no-any-return]

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        ids: list[int] = []
        for provider in dict.fromkeys(s.provider for s in specs):
            mine = [s for s in specs if s.provider == provider]
            ids += self._do(Calls.add_nodes(mine)).node_ids
        return ids

    def nodes(self) -> list[NodeView]:
        return list(self._pages(Calls.nodes()))

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        return self._do(Calls.search(request, sort, limit))  # type: ignore[no-any-return]

    def submit(
        self, envelope: Envelope, *, now: datetime | None = None, idempotency_key: str | None = None
    ) -> JobView:
        call = Calls.submit(envelope, self._issuer(envelope), idempotency_key or _fresh_key())
        return self._do(call)  # type: ignore[no-any-return]

    def submit_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        issuers = {self._issuer(e) for e in envelopes}
        if len(issuers) != 1:
            raise InputError("a batch submitted over the API is one account's envelopes")
        call = Calls.submit_many(envelopes, issuers.pop(), idempotency_key or _fresh_key())
        return self._do(call).job_ids  # type: ignore[no-any-return]

    def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]:
        return list(self._pages(Calls.jobs(account, state, limit), limit))

    def job(self, job_id: int) -> JobView:
        return self._do(Calls.job(job_id))  # type: ignore[no-any-return]

    def explain(self, job_id: int) -> ExplainView:
        return self._do(Calls.explain(job_id))  # type: ignore[no-any-return]

    def place(self, job_id: int, node_id: int, *, idempotency_key: str | None = None) -> list[int]:
        call = Calls.place(job_id, node_id, idempotency_key or _fresh_key())
        return self._do(call).allocation_ids  # type: ignore[no-any-return]

    def cancel(self, job_id: int) -> JobView:
        return self._do(Calls.cancel(job_id))  # type: ignore[no-any-return]

    def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]:
        provider = next((n.provider for n in self.nodes() if n.id == node_id), None)
        if provider is None:
            raise NotFoundError(f"no node with id {node_id}: see `depin node list`")
        return list(self._pages(Calls.allocations(node_id, provider, limit), limit))

    def scheduler_running(self) -> bool:
        return self._do(Calls.scheduler_running()).scheduler_running  # type: ignore[no-any-return]

    def ledger_entries(self, *, account: str | None = None, limit: int = 100) -> list[EntryView]:
        pages: list[list[EntryView]] = []
        cursor, seen = None, 0
        call = Calls.ledger_entries(account, limit)
        while seen < limit:  # pages come newest first, each oldest first
            page = self._do(call.page(cursor))
            pages.append(page.items[-(limit - seen) :] if page.items else [])
            seen += len(pages[-1])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        return [e for page in reversed(pages) for e in page]

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        import json

        self.info  # noqa: B018
        request = self._request(Call("GET", wire.LEDGER_EXPORT, signer=OPERATOR))
        with self.http.stream(**request) as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            for line in response.iter_lines():
                if line:
                    yield json.loads(line)

    def verify_ledger(self) -> VerifyReport:
        return self._do(Calls.verify_ledger())  # type: ignore[no-any-return]


class AsyncHttpMarket(_Base):
    """The same operations over ``httpx.AsyncClient``, for programs that run on asyncio."""

    def __init__(
        self,
        url: str,
        keys_dir: Path,
        *,
        account: str | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        super().__init__(url, keys_dir, account)
        self.http = http or httpx.AsyncClient(timeout=TIMEOUT)
        self._keys_cache: dict[str, KeyView] = {}

    async def aclose(self) -> None:
        await self.http.aclose()

    def _lookup(self, key_ids: list[str]) -> list[KeyView]:
        # The key ring resolves signers synchronously; the keys were fetched by ``prepare``.
        return [self._keys_cache[k] for k in key_ids if k in self._keys_cache]

    async def prepare(self) -> None:
        """Learn the market's identity and which accounts the local keys sign for."""
        self._info = await self._do(Calls.market_info())
        self.keys.operator_key_id = self._info.operator_key_id
        local = [k.key_id for k in keystore.list_keys(self.keys.keys_dir)]
        if local:
            found = await self._do(Calls.registered_keys(local[: wire.MAX_LOOKUP_KEYS]))
            self._keys_cache = {k.key_id: k for k in found}
        self.keys.forget()

    async def _do(self, call: Call) -> Any:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.http.request(**self._request(call))
            except httpx.TransportError as exc:
                if not call.repeatable or attempt == ATTEMPTS:
                    raise RemoteError(f"cannot reach the market at {self.url}: {exc}") from exc
            else:
                if response.status_code not in RETRY_STATUS or not call.repeatable:
                    return _read(call, response)
                if attempt == ATTEMPTS:
                    return _read(call, response)
            await asyncio.sleep(BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    async def submit(self, envelope: Envelope, *, idempotency_key: str | None = None) -> JobView:
        for sig in envelope.signatures:
            if sig.keyid not in self._keys_cache:
                for k in await self._do(Calls.registered_keys([sig.keyid])):
                    self._keys_cache[k.key_id] = k
        call = Calls.submit(envelope, self._issuer(envelope), idempotency_key or _fresh_key())
        return await self._do(call)  # type: ignore[no-any-return]

    async def job(self, job_id: int) -> JobView:
        return await self._do(Calls.job(job_id))  # type: ignore[no-any-return]

    async def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]:
        page = await self._do(Calls.jobs(account, state, limit))
        return page.items[:limit]  # type: ignore[no-any-return]

    async def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        return await self._do(Calls.search(request, sort, limit))  # type: ignore[no-any-return]

    async def cancel(self, job_id: int) -> JobView:
        return await self._do(Calls.cancel(job_id))  # type: ignore[no-any-return]


def _fresh_key() -> str:
    """An idempotency key for a request the caller did not name: its retries share it."""
    return uuid.uuid4().hex


__all__ = ["AsyncHttpMarket", "Call", "Calls", "DepinError", "HttpMarket", "KeyRing"]
