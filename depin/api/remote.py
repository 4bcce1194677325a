"""The ``Market`` protocol over HTTP: what ``depin.Client(url=...)`` and
``depin.AsyncClient`` talk to.

    Calls            one builder per market operation: HTTP method, path, body, who signs
                     it and what comes back; shared by the sync and the async market
    KeyRing          the local private keys, and which account each is registered to
    HttpMarket       the protocol over ``httpx.Client``
    AsyncHttpMarket  the same operations over ``httpx.AsyncClient``

Both markets share everything but the I/O: the calls, how a call becomes a
request (``_Base._request``), how an answer is read (``_read``), when a call is
tried again (``_again``), how pages are followed (``_Pages``) and the pure
steps between calls (an envelope's issuer, a batch per provider). Each
method is the same few lines in both, with ``await`` in the async one.

Every request that needs one is signed (RFC 9421, ``Ed25519Auth``) with the
newest active local key of the account it acts for; a retry is signed anew
(a new nonce) under the same ``Idempotency-Key``. A call that is safe to
repeat (a GET, or a POST with an ``Idempotency-Key``) is tried again with
backoff when the market cannot be reached or a gateway answers 502/503/504.
Private keys never leave this machine. Errors come back as the same
``DepinError`` classes the market raised (``depin.api.problems``).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import TypeAdapter

from depin import keys as keystore
from depin import manifest
from depin.api import problems, wire
from depin.api.signing import Ed25519Auth
from depin.errors import DepinError, InputError, NotFoundError, RemoteError
from depin.ledger import Balance, VerifyReport
from depin.limits import HTTP_ATTEMPTS, HTTP_BACKOFF_S, HTTP_CONNECT_TIMEOUT_S, HTTP_TIMEOUT_S
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
    LogPage,
    NodeView,
)
from scheduler.search import Hit

_LOG_PAGE = TypeAdapter(LogPage)
ATTEMPTS, BACKOFF_S = HTTP_ATTEMPTS, HTTP_BACKOFF_S  # (module names a test may shorten)
TIMEOUT = httpx.Timeout(HTTP_TIMEOUT_S, connect=HTTP_CONNECT_TIMEOUT_S)
RETRY_STATUS = frozenset({502, 503, 504})

# Who signs a call: nobody, an account (its newest active local key), the operator's key,
# a key given by id (the one a new account registers), or the acting account.
PUBLIC, OPERATOR, ACTING = "public", "operator", "acting"
_ACCOUNT, _KEY = "account:", "key:"


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
    return _ACCOUNT + account


def _key(kid: str) -> str:
    return _KEY + kid


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
    def job_logs(job_id: int, after_id: int, limit: int) -> Call:
        params = {"after": after_id}
        return Call("GET", wire.JOB_LOGS.format(job_id=job_id), LogPage, params, signer=ACTING)

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

    @staticmethod
    def export_ledger() -> Call:
        """Streamed as JSON lines: read line by line, not through ``returns``."""
        return Call("GET", wire.LEDGER_EXPORT, signer=OPERATOR)


class KeyRing:
    """The local private keys, and which accounts they are registered to.

    Which account a key signs for is the market's to say: a market asks once
    (``learn``) before it resolves a signer that needs it, and again after keys
    change (``forget``). Resolving a signer is then a pure lookup, the same for
    either transport.
    """

    def __init__(self, keys_dir: Path, account: str | None = None) -> None:
        self.keys_dir = keys_dir
        self.account = account  # the acting account, when the caller named one
        self.registered: list[KeyView] | None = None  # None: not asked since keys changed
        self.operator_key_id: str | None = None  # from the market's info
        self._files: dict[str, keystore.KeyInfo] | None = None
        self._loaded: dict[str, Ed25519PrivateKey] = {}  # read once: every request signs

    def local(self) -> dict[str, keystore.KeyInfo]:
        """The local key files by id (listed once; again after ``forget`` or a miss)."""
        if self._files is None:
            self._files = {
                k.key_id: k for k in keystore.list_keys(self.keys_dir) if k.path.exists()
            }
        return self._files

    def needs_registry(self, signer: str) -> bool:
        """Whether resolving ``signer`` needs the registry, and it is not known."""
        return self.registered is None and (signer == ACTING or signer.startswith(_ACCOUNT))

    def learn(self, registered: Sequence[KeyView]) -> None:
        self.registered = list(registered)

    def forget(self) -> None:
        """Keys changed (made, registered, rotated, revoked): look again next time."""
        self.registered = self._files = None

    def private(self, key_id: str) -> Ed25519PrivateKey:
        if key_id not in self._loaded:
            info = self.local().get(key_id)
            if info is None:
                self._files = None  # perhaps made since: list the folder again
                info = self.local().get(key_id)
            if info is None:
                raise NotFoundError(f"no local private key {key_id} in {self.keys_dir}")
            self._loaded[key_id] = keystore.load_private(str(info.path), self.keys_dir)
        return self._loaded[key_id]

    def known(self, key_ids: Sequence[str]) -> list[KeyView] | None:
        """The registrations of ``key_ids`` if the registry already holds them all."""
        if self.registered is None:
            return None
        found = [k for k in self.registered if k.key_id in key_ids]
        return found if {k.key_id for k in found} >= set(key_ids) else None

    def _known(self) -> list[KeyView]:
        assert self.registered is not None, "the market learns the registry before resolving"
        return self.registered

    def for_account(self, account: str) -> Ed25519PrivateKey:
        """The newest active local key registered to ``account``; else the operator's, if it is
        here (the operator may act for any account, as the embedded market lets it)."""
        usable = [k for k in self._known() if k.account == account and k.state == "active"]
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
        return self.operator_key_id is not None and self.operator_key_id in self.local()

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
        known = self._known()
        accounts = sorted({k.account for k in known if k.state == "active"})
        developers = [a for a in accounts if _kind(known, a) == "developer"]
        chosen = developers if len(developers) == 1 else accounts
        if len(chosen) != 1:
            found = ", ".join(accounts) or "none"
            raise InputError(
                f"say which account asks with DEPIN_ACCOUNT=NAME (local accounts: {found})"
            )
        return self.for_account(chosen[0])

    def resolve(self, signer: str) -> Ed25519PrivateKey | None:
        """The key that signs for ``signer`` (None: the call is unsigned)."""
        if signer == PUBLIC:
            return None
        if signer == OPERATOR:
            return self.operator()
        if signer == ACTING:
            return self.acting()
        if signer.startswith(_KEY):
            return self.private(signer.removeprefix(_KEY))
        return self.for_account(signer.removeprefix(_ACCOUNT))


def _kind(keys: list[KeyView], account: str) -> str:
    return next(k.account_kind for k in keys if k.account == account)


# -- what both transports share: reading answers, retrying, paging, and the pure steps ------
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


def _again(call: Call, attempt: int, status: int | None = None) -> bool:
    """Whether to try ``call`` again after ``attempt`` found no market (``status`` None) or
    answered ``status``: only a repeatable call, only on a gateway's transient failure."""
    transient = status is None or status in RETRY_STATUS
    return transient and call.repeatable and attempt < ATTEMPTS


def _backoff_s(attempt: int) -> float:
    return BACKOFF_S * 2 ** (attempt - 1)


def _lookups(key_ids: Sequence[str]) -> list[Call]:
    """The registry lookups for ``key_ids``: as many as its per-request bound asks."""
    step = wire.MAX_LOOKUP_KEYS
    return [Calls.registered_keys(key_ids[i : i + step]) for i in range(0, len(key_ids), step)]


@dataclass
class _Pages:
    """Where a paged list stands: the next page to ask for, and the items kept so far.

    ``newest_first``: the pages come newest first, each oldest first (the ledger's
    entries); the newest ``limit`` items are kept, and come back oldest first.
    """

    call: Call
    limit: int | None = None
    newest_first: bool = False
    items: list[Any] = field(default_factory=list)
    cursor: str | None = None
    done: bool = False

    def next(self) -> Call | None:
        return None if self.done else self.call.page(self.cursor)

    def add(self, page: wire.Page[Any]) -> None:
        room = len(page.items) if self.limit is None else self.limit - len(self.items)
        if self.newest_first:
            self.items[:0] = page.items[max(0, len(page.items) - room) :]
        else:
            self.items += page.items[:room]
        self.cursor = page.next_cursor
        full = self.limit is not None and len(self.items) >= self.limit
        self.done = self.cursor is None or full


def _issuer(envelope: Envelope, found: Sequence[KeyView]) -> str:
    """The account an envelope is verifiably signed for (its key's, checked here)."""
    keys = {k.key_id: k for k in found}

    def find(kid: str) -> list[Ed25519PublicKey]:
        return [keystore.public_key_from_b64(keys[kid].public_key)] if kid in keys else []

    signature, _ = manifest.verify_signature(envelope, find)
    return keys[signature.keyid].account


def _one_issuer(issuers: set[str]) -> str:
    if len(issuers) != 1:
        raise InputError("a batch submitted over the API is one account's envelopes")
    return issuers.pop()


def _signature_ids(envelopes: Sequence[Envelope]) -> list[str]:
    return list(dict.fromkeys(s.keyid for e in envelopes for s in e.signatures))


def _by_provider(specs: Sequence[NodeSpec]) -> list[list[NodeSpec]]:
    """A batch of nodes as one request per provider: each is signed by its own provider."""
    return [[s for s in specs if s.provider == p] for p in dict.fromkeys(s.provider for s in specs)]


def _registered(found: Sequence[KeyView], key_id: str) -> KeyView:
    if not found:
        raise NotFoundError(f"no registered key {key_id!r}: see `depin keys list --account NAME`")
    return found[0]


def _provider_of(nodes: Sequence[NodeView], node_id: int) -> str:
    provider = next((n.provider for n in nodes if n.id == node_id), None)
    if provider is None:
        raise NotFoundError(f"no node with id {node_id}: see `depin node list`")
    return provider


def _entry(line: str) -> dict[str, Any]:
    return json.loads(line)  # type: ignore[no-any-return]


def _fresh_key() -> str:
    """An idempotency key for a request the caller did not name: its retries share it."""
    return uuid.uuid4().hex


class _Base:
    """What both markets share: the base URL, the key ring, the market's identity, and how
    a call becomes a request."""

    def __init__(self, url: str, keys_dir: Path, account: str | None) -> None:
        self.url = url.rstrip("/")
        self.keys = KeyRing(keys_dir, account)
        self._info: wire.MarketInfo | None = None

    def _learn_info(self, info: wire.MarketInfo) -> wire.MarketInfo:
        self._info = info
        self.keys.operator_key_id = info.operator_key_id
        return info

    def _request(self, call: Call, private: Ed25519PrivateKey | None) -> dict[str, Any]:
        """The arguments of ``httpx``'s ``request``/``stream``; ``Ed25519Auth`` signs each
        attempt anew (a fresh nonce) when it is sent."""
        headers = {}
        if call.idempotency_key is not None:
            headers[wire.IDEMPOTENCY_HEADER] = call.idempotency_key
        return {
            "method": call.method,
            "url": self.url + call.path,
            "params": call.params,
            "json": call.json,
            "headers": headers,
            "auth": None if private is None else Ed25519Auth(private, self._market_id()),
        }

    def _market_id(self) -> str:
        """The market a signature names; known before any signed call (``_key_for``)."""
        assert self._info is not None, "a signed call learns the market's info first"
        return self._info.market_id

    def _unreachable(self, exc: httpx.TransportError) -> RemoteError:
        return RemoteError(f"cannot reach the market at {self.url}: {exc}")


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

    # -- the transport ---------------------------------------------------------------------
    def _do(self, call: Call) -> Any:
        request = self._request(call, self._key_for(call.signer))
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = self.http.request(**request)
            except httpx.TransportError as exc:
                if not _again(call, attempt):
                    raise self._unreachable(exc) from exc
            else:
                if not _again(call, attempt, response.status_code):
                    return _read(call, response)
            time.sleep(_backoff_s(attempt))
        raise AssertionError("unreachable")

    def _key_for(self, signer: str) -> Ed25519PrivateKey | None:
        if signer != PUBLIC:
            self.info  # noqa: B018 (learns the operator's key id: it may be the one that signs)
        if self.keys.needs_registry(signer):
            self.keys.learn(self._lookup(list(self.keys.local())))
        return self.keys.resolve(signer)

    def _lookup(self, key_ids: Sequence[str]) -> list[KeyView]:
        return [k for call in _lookups(key_ids) for k in self._do(call)]

    def _signers_of(self, key_ids: Sequence[str]) -> list[KeyView]:
        """Who signed with ``key_ids``: our own keys' registrations are known already."""
        known = self.keys.known(key_ids)
        return self._lookup(key_ids) if known is None else known

    def _all(self, pages: _Pages) -> list[Any]:
        while (call := pages.next()) is not None:
            pages.add(self._do(call))
        return pages.items

    # -- the protocol ------------------------------------------------------------------------
    @property
    def info(self) -> wire.MarketInfo:
        return self._info or self._learn_info(self._do(Calls.market_info()))

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
        return self._all(_Pages(Calls.balances(account)))

    def registered_keys(self, key_ids: Sequence[str]) -> list[KeyView]:
        return self._lookup(key_ids)

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
        key = _registered(self._lookup([key_id]), key_id)
        view = self._do(Calls.revoke_key(key_id, key.account))
        self.keys.forget()
        return view  # type: ignore[no-any-return]

    def add_node(self, spec: NodeSpec, *, idempotency_key: str | None = None) -> NodeView:
        return self._do(Calls.add_node(spec, idempotency_key))  # type: ignore[no-any-return]

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        batches = _by_provider(specs)
        return [i for batch in batches for i in self._do(Calls.add_nodes(batch)).node_ids]

    def nodes(self) -> list[NodeView]:
        return self._all(_Pages(Calls.nodes()))

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        return self._do(Calls.search(request, sort, limit))  # type: ignore[no-any-return]

    def submit(
        self, envelope: Envelope, *, now: datetime | None = None, idempotency_key: str | None = None
    ) -> JobView:
        issuer = _issuer(envelope, self._signers_of(_signature_ids([envelope])))
        return self._do(Calls.submit(envelope, issuer, idempotency_key or _fresh_key()))  # type: ignore[no-any-return]

    def submit_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]:
        found = self._signers_of(_signature_ids(envelopes))
        issuer = _one_issuer({_issuer(e, found) for e in envelopes})
        call = Calls.submit_many(envelopes, issuer, idempotency_key or _fresh_key())
        return self._do(call).job_ids  # type: ignore[no-any-return]

    def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]:
        return self._all(_Pages(Calls.jobs(account, state, limit), limit))

    def job(self, job_id: int) -> JobView:
        return self._do(Calls.job(job_id))  # type: ignore[no-any-return]

    def explain(self, job_id: int) -> ExplainView:
        return self._do(Calls.explain(job_id))  # type: ignore[no-any-return]

    def place(self, job_id: int, node_id: int, *, idempotency_key: str | None = None) -> list[int]:
        call = Calls.place(job_id, node_id, idempotency_key or _fresh_key())
        return self._do(call).allocation_ids  # type: ignore[no-any-return]

    def cancel(self, job_id: int) -> JobView:
        return self._do(Calls.cancel(job_id))  # type: ignore[no-any-return]

    def job_logs(self, job_id: int, *, after_id: int = 0, limit: int = 1000) -> LogPage:
        return self._do(Calls.job_logs(job_id, after_id, limit))  # type: ignore[no-any-return]

    def follow_logs(self, job_id: int, *, after_id: int = 0) -> Iterator[LogPage]:
        """The job's output as the server streams it (JSON lines), until the job has ended."""
        call = Calls.job_logs(job_id, after_id, wire.MAX_PAGE)
        call.params["follow"] = "true"
        request = self._request(call, self._key_for(call.signer))
        timeout = httpx.Timeout(None, connect=TIMEOUT.connect)  # a quiet job sends nothing
        try:
            with self.http.stream(**request, timeout=timeout) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _LOG_PAGE.validate_json(line)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc

    def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]:
        provider = _provider_of(self.nodes(), node_id)
        return self._all(_Pages(Calls.allocations(node_id, provider, limit), limit))

    def scheduler_running(self) -> bool:
        return self._do(Calls.scheduler_running()).scheduler_running  # type: ignore[no-any-return]

    def ledger_entries(self, *, account: str | None = None, limit: int = 100) -> list[EntryView]:
        return self._all(_Pages(Calls.ledger_entries(account, limit), limit, newest_first=True))

    def export_ledger(self) -> Iterator[dict[str, Any]]:
        call = Calls.export_ledger()
        try:
            with self.http.stream(**self._request(call, self._key_for(call.signer))) as response:
                if not response.is_success:
                    response.read()
                    _raise_for(response)
                for line in response.iter_lines():
                    if line:
                        yield _entry(line)
        except httpx.TransportError as exc:  # the stream is not retried: it may be half read
            raise self._unreachable(exc) from exc

    def verify_ledger(self) -> VerifyReport:
        return self._do(Calls.verify_ledger())  # type: ignore[no-any-return]


class AsyncHttpMarket(_Base):
    """The same operations over ``httpx.AsyncClient``, for programs that run on asyncio.

    Each method is its ``HttpMarket`` twin with ``await``: the same calls (``Calls``),
    the same request, the same reading of the answer and the same pure steps between.
    """

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
        self._learning = asyncio.Lock()  # many tasks that need the registry ask for it once

    async def aclose(self) -> None:
        await self.http.aclose()

    # -- the transport ---------------------------------------------------------------------
    async def _do(self, call: Call) -> Any:
        request = self._request(call, await self._key_for(call.signer))
        for attempt in range(1, ATTEMPTS + 1):
            try:
                response = await self.http.request(**request)
            except httpx.TransportError as exc:
                if not _again(call, attempt):
                    raise self._unreachable(exc) from exc
            else:
                if not _again(call, attempt, response.status_code):
                    return _read(call, response)
            await asyncio.sleep(_backoff_s(attempt))
        raise AssertionError("unreachable")

    async def _key_for(self, signer: str) -> Ed25519PrivateKey | None:
        if signer != PUBLIC:
            await self.info()  # learns the operator's key id: it may be the one that signs
        if self.keys.needs_registry(signer):
            async with self._learning:  # the lookups themselves are unsigned: no re-entry
                if self.keys.needs_registry(signer):
                    self.keys.learn(await self._lookup(list(self.keys.local())))
        return self.keys.resolve(signer)  # no await since learn: nothing forgot it meanwhile

    async def _lookup(self, key_ids: Sequence[str]) -> list[KeyView]:
        return [k for call in _lookups(key_ids) for k in await self._do(call)]

    async def _signers_of(self, key_ids: Sequence[str]) -> list[KeyView]:
        """Who signed with ``key_ids``: our own keys' registrations are known already."""
        known = self.keys.known(key_ids)
        return await self._lookup(key_ids) if known is None else known

    async def _all(self, pages: _Pages) -> list[Any]:
        while (call := pages.next()) is not None:
            pages.add(await self._do(call))
        return pages.items

    # -- the operations ----------------------------------------------------------------------
    async def info(self) -> wire.MarketInfo:
        return self._info or self._learn_info(await self._do(Calls.market_info()))

    async def market_id(self) -> str:
        return (await self.info()).market_id

    async def create_account(
        self,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        kind: str = "developer",
        idempotency_key: str | None = None,
    ) -> AccountView:
        view = await self._do(Calls.create_account(name, public_key, kind, idempotency_key))
        self.keys.forget()
        return view  # type: ignore[no-any-return]

    async def deposit(
        self, name: str, amount_micro_usd: int, *, idempotency_key: str | None = None
    ) -> Balance:
        return await self._do(Calls.deposit(name, amount_micro_usd, idempotency_key))  # type: ignore[no-any-return]

    async def account(self, name: str) -> AccountView:
        return await self._do(Calls.account(name))  # type: ignore[no-any-return]

    async def balances(self, account: str | None = None) -> list[Balance]:
        return await self._all(_Pages(Calls.balances(account)))

    async def registered_keys(self, key_ids: Sequence[str]) -> list[KeyView]:
        return await self._lookup(key_ids)

    async def keys_of(self, account: str) -> list[KeyView]:
        return await self._do(Calls.keys_of(account))  # type: ignore[no-any-return]

    async def rotate_key(
        self,
        account: str,
        public_key: Ed25519PublicKey,
        *,
        not_after: datetime | None = None,
        revoke_old: bool = False,
    ) -> tuple[KeyView, list[KeyView]]:
        done = await self._do(Calls.rotate_key(account, public_key, not_after, revoke_old))
        self.keys.forget()
        return done.key, done.revoked

    async def revoke_key(self, key_id: str) -> KeyView:
        key = _registered(await self._lookup([key_id]), key_id)
        view = await self._do(Calls.revoke_key(key_id, key.account))
        self.keys.forget()
        return view  # type: ignore[no-any-return]

    async def add_node(self, spec: NodeSpec, *, idempotency_key: str | None = None) -> NodeView:
        return await self._do(Calls.add_node(spec, idempotency_key))  # type: ignore[no-any-return]

    async def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]:
        batches = _by_provider(specs)
        return [i for batch in batches for i in (await self._do(Calls.add_nodes(batch))).node_ids]

    async def nodes(self) -> list[NodeView]:
        return await self._all(_Pages(Calls.nodes()))

    async def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]:
        return await self._do(Calls.search(request, sort, limit))  # type: ignore[no-any-return]

    async def submit(self, envelope: Envelope, *, idempotency_key: str | None = None) -> JobView:
        issuer = _issuer(envelope, await self._signers_of(_signature_ids([envelope])))
        return await self._do(Calls.submit(envelope, issuer, idempotency_key or _fresh_key()))  # type: ignore[no-any-return]

    async def submit_many(
        self, envelopes: Sequence[Envelope], *, idempotency_key: str | None = None
    ) -> list[int]:
        found = await self._signers_of(_signature_ids(envelopes))
        issuer = _one_issuer({_issuer(e, found) for e in envelopes})
        call = Calls.submit_many(envelopes, issuer, idempotency_key or _fresh_key())
        return (await self._do(call)).job_ids  # type: ignore[no-any-return]

    async def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]:
        return await self._all(_Pages(Calls.jobs(account, state, limit), limit))

    async def job(self, job_id: int) -> JobView:
        return await self._do(Calls.job(job_id))  # type: ignore[no-any-return]

    async def explain(self, job_id: int) -> ExplainView:
        return await self._do(Calls.explain(job_id))  # type: ignore[no-any-return]

    async def place(
        self, job_id: int, node_id: int, *, idempotency_key: str | None = None
    ) -> list[int]:
        call = Calls.place(job_id, node_id, idempotency_key or _fresh_key())
        return (await self._do(call)).allocation_ids  # type: ignore[no-any-return]

    async def cancel(self, job_id: int) -> JobView:
        return await self._do(Calls.cancel(job_id))  # type: ignore[no-any-return]

    async def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]:
        provider = _provider_of(await self.nodes(), node_id)
        return await self._all(_Pages(Calls.allocations(node_id, provider, limit), limit))

    async def scheduler_running(self) -> bool:
        return (await self._do(Calls.scheduler_running())).scheduler_running  # type: ignore[no-any-return]

    async def ledger_entries(
        self, *, account: str | None = None, limit: int = 100
    ) -> list[EntryView]:
        pages = _Pages(Calls.ledger_entries(account, limit), limit, newest_first=True)
        return await self._all(pages)

    async def export_ledger(self) -> AsyncIterator[dict[str, Any]]:
        call = Calls.export_ledger()
        request = self._request(call, await self._key_for(call.signer))
        try:
            async with self.http.stream(**request) as response:
                if not response.is_success:
                    await response.aread()
                    _raise_for(response)
                async for line in response.aiter_lines():
                    if line:
                        yield _entry(line)
        except httpx.TransportError as exc:  # the stream is not retried: it may be half read
            raise self._unreachable(exc) from exc

    async def verify_ledger(self) -> VerifyReport:
        return await self._do(Calls.verify_ledger())  # type: ignore[no-any-return]


__all__ = ["AsyncHttpMarket", "Call", "Calls", "DepinError", "HttpMarket", "KeyRing"]
