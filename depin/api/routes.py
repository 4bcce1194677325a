"""The API's routes: one per market operation, each saying who may call it.

    public (unsigned)   market info, health, the node list, offers, key lookup, scheduler
    self-service        open an account, signed by the key it registers
    the account itself  its account, keys, balances, jobs, entries (the operator: any)
    a provider          its nodes, and the allocations on them
    the operator        deposits, the whole ledger's export

A mutation spends its request's nonce in its own transaction (``nonce=``);
a signed read spends it first, in one of its own.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from http import HTTPStatus
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from depin import __version__
from depin.api import problems, wire
from depin.api.auth import Caller
from depin.db.migrate import current_revision, head_revision
from depin.errors import InputError
from depin.intake import Submission
from depin.keys import public_key_from_b64
from depin.ledger import Balance, VerifyReport
from depin.manifest import Envelope
from depin.market import Marketplace
from depin.spec import NodeSpec, job_from_data
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

# The errors a route may answer with, each an RFC 9457 problem document (``errors``).
PUBLIC = (429,)  # an unsigned request draws from its address's rate limit
SIGNED = (401, 403, 409, 429)  # bad or replayed signature, not yours, a conflict, rate limit
BODY = (400, 413, 422)  # not JSON, too large, not valid
INPUT = (422,)  # a path or query parameter out of range
FOUND = (404,)  # the account, key, node or job named does not exist
MONEY = (402,)  # the account cannot hold the most the job can cost


def errors(*groups: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` for these error statuses: problem+json, one schema."""
    statuses = sorted({status for group in groups for status in group})
    return {
        status: {
            "description": HTTPStatus(status).phrase,
            "content": {problems.PROBLEM_JSON: {"schema": {"$ref": wire.PROBLEM_REF}}},
        }
        for status in statuses
    }


router = APIRouter()
IdempotencyKey = Annotated[str | None, Header(alias=wire.IDEMPOTENCY_HEADER)]
Limit = Annotated[int, Query(ge=1, le=wire.MAX_PAGE)]
Cursor = Annotated[str | None, Query(max_length=128)]
IdCursor = Annotated[str | None, Query(pattern=wire.ID_CURSOR)]
JobId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]
NodeId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]


def _market(request: Request) -> Marketplace:
    return request.app.state.market  # type: ignore[no-any-return]


Market = Annotated[Marketplace, Depends(_market)]


def target_uri(request: Request) -> str:
    """The URI the client sent, and signed (RFC 9421 ``@target-uri``): its path as it came,
    percent-encoded, where ``request.url`` has the decoded path."""
    raw_path = request.scope.get("raw_path")
    if not raw_path:
        return str(request.url)
    return str(request.url.replace(path=raw_path.decode("latin-1")))


async def signed(request: Request) -> Caller:
    """The verified signer of this request (401 without a valid signature)."""
    body = await request.body()
    auth = request.app.state.auth
    headers = request.headers.items()
    uri, address = target_uri(request), _address(request)
    return await run_in_threadpool(
        lambda: auth.caller(request.method, uri, headers, body, address=address)
    )


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def public(request: Request) -> None:
    """An unsigned request: it draws from its address's rate limit."""
    request.app.state.auth.anonymous(_address(request))


Signed = Annotated[Caller, Depends(signed)]
Public = Depends(public)


def _json(view: Any, status: int = 200) -> Response:
    """A read model as its JSON, skipping FastAPI's re-validation of a value the market
    built itself (the hot routes: a submission, a job's status); the declared
    ``response_model`` still documents it, and the schema tests hold it to that."""
    return Response(orjson.dumps(dataclasses.asdict(view)), status, media_type="application/json")


def _int_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.isascii() and cursor.isdigit()) or int(cursor) > wire.MAX_ID:
        raise InputError(f"cursor {cursor!r} is not one this list gave")
    return int(cursor)


def _whose(caller: Caller, account: str | None, what: str) -> str | None:
    """The account a private list is of: the one asked for, if the caller may read it; by
    default the caller's own (the operator's default: everyone's)."""
    if account is None and not caller.operator:
        account = caller.account
    if account is not None:
        caller.must_be(account, f"account {account!r}'s {what}")
    return account


def _read_as(market: Marketplace, caller: Caller) -> None:
    """A signed read spends its nonce before it is answered: a replay reads nothing."""
    market.record_nonce(caller.nonce)


# -- the market ----------------------------------------------------------------------------
@router.get("/healthz", tags=["health"])
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", tags=["health"])
def readyz(market: Market) -> dict[str, str]:
    """The database answers and its schema is current."""
    revision = current_revision(market.engine)
    if revision != head_revision():
        from depin.errors import DatabaseError

        raise DatabaseError(f"the database is at revision {revision}, not {head_revision()}")
    return {"status": "ready", "revision": revision or ""}


@router.get(wire.MARKET, dependencies=[Public], tags=["market"], responses=errors(PUBLIC))
def market_info(market: Market) -> wire.MarketInfo:
    operator = market.operator_key()
    return wire.MarketInfo(
        market_id=market.market_id,
        version=__version__,
        operator_key_id=None if operator is None else operator[0],
        operator_public_key=None if operator is None else operator[1],
    )


@router.get(wire.SCHEDULER, dependencies=[Public], tags=["market"], responses=errors(PUBLIC))
def scheduler_running(market: Market) -> wire.Running:
    return wire.Running(scheduler_running=market.scheduler_running())


# -- accounts and keys ---------------------------------------------------------------------
@router.post(
    wire.ACCOUNTS, status_code=201, tags=["accounts"], responses=errors((401, 409, 429), BODY)
)
async def create_account(
    request: Request, body: wire.NewAccount, idempotency_key: IdempotencyKey = None
) -> AccountView:
    """Open an account: the request is signed by the key it registers."""
    public_key = public_key_from_b64(body.public_key)
    raw = await request.body()
    auth, market = request.app.state.auth, _market(request)
    caller = await run_in_threadpool(
        lambda: auth.caller(
            request.method,
            target_uri(request),
            request.headers.items(),
            raw,
            address=_address(request),
            new_key=public_key,
        )
    )
    return await run_in_threadpool(
        market.create_account,
        body.name,
        public_key,
        kind=body.kind,
        idempotency_key=idempotency_key,
        nonce=caller.nonce,
    )


@router.get(wire.ACCOUNT, tags=["accounts"], responses=errors(SIGNED, INPUT, FOUND))
def account(name: str, market: Market, caller: Signed) -> AccountView:
    caller.must_be(name, f"account {name!r}")
    _read_as(market, caller)
    return market.account(name)


@router.post(wire.DEPOSITS, tags=["accounts"], responses=errors(SIGNED, BODY, FOUND))
def deposit(
    name: str,
    body: wire.Deposit,
    market: Market,
    caller: Signed,
    idempotency_key: IdempotencyKey = None,
) -> Balance:
    """Pay money in: only the market operator's key signs deposits (its payment rail)."""
    caller.must_be_operator("sign deposits")
    return market.deposit(name, body.micro_usd, idempotency_key=idempotency_key, nonce=caller.nonce)


@router.get(wire.ACCOUNT_KEYS, tags=["accounts"], responses=errors(SIGNED, INPUT, FOUND))
def account_keys(name: str, market: Market, caller: Signed) -> list[KeyView]:
    caller.must_be(name, f"account {name!r}'s keys")
    _read_as(market, caller)
    return market.keys_of(name)


@router.post(
    wire.ACCOUNT_KEYS, status_code=201, tags=["accounts"], responses=errors(SIGNED, BODY, FOUND)
)
def rotate_key(
    request: Request, name: str, body: wire.NewKey, market: Market, caller: Signed
) -> wire.Rotated:
    caller.must_be(name, f"account {name!r}'s keys")
    key, revoked = market.rotate_key(
        name,
        public_key_from_b64(body.public_key),
        not_after=body.not_after,
        revoke_old=body.revoke_old,
        nonce=caller.nonce,
    )
    request.app.state.auth.forget()  # the revoked keys sign nothing more here, at once
    return wire.Rotated(key=key, revoked=revoked)


@router.get(wire.KEYS, dependencies=[Public], tags=["accounts"], responses=errors(PUBLIC, INPUT))
def lookup_keys(
    market: Market, key_id: Annotated[list[str], Query(max_length=wire.MAX_LOOKUP_KEYS)]
) -> list[KeyView]:
    """Public: which of these key ids are registered, to which accounts, in what state."""
    return market.registered_keys(key_id)


@router.post(wire.KEY_REVOCATION, tags=["accounts"], responses=errors(SIGNED, INPUT, FOUND))
def revoke_key(request: Request, key_id: str, market: Market, caller: Signed) -> KeyView:
    by = None if caller.operator else caller.account  # checked with the key's row locked
    revoked = market.revoke_key(key_id, by=by, nonce=caller.nonce)
    request.app.state.auth.forget()  # a revocation takes effect here at once
    return revoked


@router.get(wire.BALANCES, tags=["ledger"], responses=errors(SIGNED, INPUT, FOUND))
def balances(
    market: Market,
    caller: Signed,
    account: str | None = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> wire.Page[Balance]:
    """One account's balance; the operator may page through all of them."""
    account = _whose(caller, account, "balance")
    _read_as(market, caller)
    items = market.balances(account, after=cursor, limit=limit)
    more = len(items) == limit and account is None
    return wire.Page(items=items, next_cursor=items[-1].account if more else None)


# -- nodes and offers ----------------------------------------------------------------------
@router.get(wire.NODES, dependencies=[Public], tags=["nodes"], responses=errors(PUBLIC, INPUT))
def nodes(market: Market, cursor: IdCursor = None, limit: Limit = 100) -> wire.Page[NodeView]:
    items = market.nodes(after_id=_int_cursor(cursor) or 0, limit=limit)
    return wire.Page(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


@router.post(wire.NODES, status_code=201, tags=["nodes"], responses=errors(SIGNED, BODY, FOUND))
def add_node(
    spec: NodeSpec, market: Market, caller: Signed, idempotency_key: IdempotencyKey = None
) -> NodeView:
    """A provider adds a node of its own."""
    caller.must_be(spec.provider, f"a node of provider {spec.provider!r}")
    return market.add_node(spec, idempotency_key=idempotency_key, nonce=caller.nonce)


@router.post(
    wire.NODE_BATCH, status_code=201, tags=["nodes"], responses=errors(SIGNED, BODY, FOUND)
)
def add_nodes(specs: list[NodeSpec], market: Market, caller: Signed) -> wire.NodeIds:
    for spec in specs:
        caller.must_be(spec.provider, f"a node of provider {spec.provider!r}")
    return wire.NodeIds(node_ids=market.add_nodes(specs, nonce=caller.nonce))


@router.get(wire.NODE_ALLOCATIONS, tags=["nodes"], responses=errors(SIGNED, INPUT, FOUND))
def node_allocations(
    node_id: NodeId, market: Market, caller: Signed, cursor: IdCursor = None, limit: Limit = 100
) -> wire.Page[AllocationView]:
    """A provider reads the allocations on its nodes."""
    caller.must_be(market.node(node_id).provider, f"node {node_id}")
    _read_as(market, caller)
    items = market.allocations(node_id, limit=limit, before_id=_int_cursor(cursor))
    return wire.Page(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


@router.post(wire.OFFERS, dependencies=[Public], tags=["nodes"], responses=errors(PUBLIC, BODY))
def offers(body: wire.Search, market: Market) -> list[Hit]:
    """Free capacity that could take a request now, ranked (``depin offers``)."""
    request = job_from_data(body.request, source="request")  # a ManifestError (422), not a 500
    return market.search(request, sort=body.sort, limit=body.limit)


# -- jobs ----------------------------------------------------------------------------------
@router.post(
    wire.JOBS,
    status_code=201,
    tags=["jobs"],
    responses=errors(SIGNED, BODY, FOUND, MONEY),
    response_model=JobView,
)
def submit(
    request: Request,
    envelope: dict[str, Any],
    caller: Signed,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Submit a signed manifest (its DSSE envelope, as signed) as the account that issued it.

    Concurrent submissions are queued together, each keeping its own outcome."""
    submission = Submission(
        Envelope.from_dict(envelope),
        idempotency_key=idempotency_key,
        nonce=caller.nonce,
        issuer=None if caller.operator else caller.account,
    )
    return _json(request.app.state.intake.submit(submission), 201)


@router.post(
    wire.JOB_BATCH, status_code=201, tags=["jobs"], responses=errors(SIGNED, BODY, FOUND, MONEY)
)
def submit_many(
    body: wire.Envelopes, market: Market, caller: Signed, idempotency_key: IdempotencyKey = None
) -> wire.JobIds:
    ids = market.submit_many(
        [Envelope.from_dict(e) for e in body.envelopes],
        idempotency_key=idempotency_key,
        nonce=caller.nonce,
        issuer=None if caller.operator else caller.account,
    )
    return wire.JobIds(job_ids=ids)


@router.get(wire.JOBS, tags=["jobs"], responses=errors(SIGNED, INPUT, FOUND))
def jobs(
    market: Market,
    caller: Signed,
    account: str | None = None,
    state: JobState | None = None,
    cursor: IdCursor = None,
    limit: Limit = 100,
) -> wire.Page[JobView]:
    """An account's jobs, newest first; the operator may list everyone's."""
    account = _whose(caller, account, "jobs")
    _read_as(market, caller)
    items = market.jobs(account=account, state=state, limit=limit, before_id=_int_cursor(cursor))
    return wire.Page(items=items, next_cursor=str(items[-1].id) if len(items) == limit else None)


def _own_job(market: Marketplace, caller: Caller, job_id: int) -> JobView:
    """The job, if the caller may see it: its owner, the operator, or a provider running it."""
    view = market.job(job_id)
    if caller.signer.account_kind == "provider" and caller.account in {
        market.node(n).provider for n in {a.node_id for a in view.allocations}
    }:
        return view
    caller.must_own_job(view.account, job_id)
    return view


@router.get(wire.JOB, tags=["jobs"], responses=errors(SIGNED, INPUT, FOUND), response_model=JobView)
def job(job_id: JobId, market: Market, caller: Signed) -> Response:
    view = _own_job(market, caller, job_id)
    _read_as(market, caller)
    return _json(view)


@router.get(wire.JOB_EXPLAIN, tags=["jobs"], responses=errors(SIGNED, INPUT, FOUND))
def explain(job_id: JobId, market: Market, caller: Signed) -> ExplainView:
    caller.must_own_job(market.job_owner(job_id), job_id)
    _read_as(market, caller)
    return market.explain(job_id)


@router.post(
    wire.JOB_PLACEMENT, status_code=201, tags=["jobs"], responses=errors(SIGNED, BODY, FOUND, MONEY)
)
def place(
    job_id: JobId,
    body: wire.Placement,
    market: Market,
    caller: Signed,
    idempotency_key: IdempotencyKey = None,
) -> wire.AllocationIds:
    caller.must_own_job(market.job_owner(job_id), job_id)
    ids = market.place(job_id, body.node_id, idempotency_key=idempotency_key, nonce=caller.nonce)
    return wire.AllocationIds(allocation_ids=ids)


@router.post(wire.JOB_CANCEL, tags=["jobs"], responses=errors(SIGNED, INPUT, FOUND))
def cancel(job_id: JobId, market: Market, caller: Signed) -> JobView:
    caller.must_own_job(market.job_owner(job_id), job_id)
    return market.cancel(job_id, nonce=caller.nonce)


# -- the ledger ----------------------------------------------------------------------------
@router.get(wire.ENTRIES, tags=["ledger"], responses=errors(SIGNED, INPUT, FOUND))
def entries(
    market: Market,
    caller: Signed,
    account: str | None = None,
    cursor: IdCursor = None,
    limit: Limit = 100,
) -> wire.Page[EntryView]:
    """An account's entries, newest page first (each page oldest first); the operator's: all."""
    account = _whose(caller, account, "entries")
    _read_as(market, caller)
    items = market.ledger_entries(account=account, limit=limit, before_id=_int_cursor(cursor))
    return wire.Page(items=items, next_cursor=str(items[0].id) if len(items) == limit else None)


@router.get(wire.LEDGER_VERIFY, tags=["ledger"], responses=errors(SIGNED))
def verify(market: Market, caller: Signed) -> VerifyReport:
    """The hash chain, every balance, receipts, holds and capacity: any account may ask."""
    _read_as(market, caller)
    return market.verify_ledger()


@router.get(wire.LEDGER_EXPORT, tags=["ledger"], responses=errors(SIGNED))
def export(market: Market, caller: Signed) -> StreamingResponse:
    """Every entry as JSON lines with its hashes, streamed (the operator's, for an audit)."""
    caller.must_be_operator("export the whole ledger")
    _read_as(market, caller)

    def lines() -> Iterator[bytes]:
        for entry in market.export_ledger():
            yield (json.dumps(entry, sort_keys=True) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
