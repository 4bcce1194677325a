"""The routes node agents call, each signed by a key of the node's provider, and the job
logs they feed.

    POST  /nodes/{id}/heartbeat                    alive; what the machine has and runs
    GET   /nodes/{id}/work?wait_s=                 the long-poll: reserved work, and stops
    POST  /nodes/{id}/allocations/{a}/acceptance   take it (signed acceptance receipt)
    POST  /nodes/{id}/allocations/{a}/log          output as it is printed
    POST  /nodes/{id}/allocations/{a}/report       the outcome and the usage receipt
    GET   /jobs/{id}/logs[?follow=true]            the job's owner reads (or follows) them

Only the node's provider (or the operator) may speak for a node; every report also
carries the allocation's fence token, which the market checks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from depin.api import wire
from depin.api.auth import Caller
from depin.api.routes import BODY, FOUND, INPUT, SIGNED, JobId, Market, NodeId, Signed, errors
from depin.limits import LONG_POLL_CHECK_S, LONG_POLL_MAX_S
from depin.market import Marketplace
from depin.runtime.agentwire import (
    Acceptance,
    Control,
    HeartbeatReply,
    LogChunk,
    NodeReport,
    Report,
    WorkReply,
)
from depin.views import LogPage
from depin.wakeups import WORK

router = APIRouter(tags=["agents"])
AllocationId = Annotated[int, Path(ge=1, le=wire.MAX_ID)]
FOLLOW_POLL_S = 0.2  # a followed log looks for new output this often
FOLLOW_MAX_S = 24 * 3600.0  # and gives up after a day (the client may follow again)


def _speaks_for(request: Request, market: Marketplace, caller: Caller, node_id: int) -> None:
    """Only the node's provider (or the operator) speaks for it. A node's provider never
    changes, so it is read once per process."""
    owners: dict[int, str] = request.app.state.node_owners
    if node_id not in owners:
        owners[node_id] = market.node(node_id).provider
    caller.must_be(owners[node_id], f"node {node_id}")


@router.post(wire.NODE_HEARTBEAT, responses=errors(SIGNED, BODY, FOUND))
def heartbeat(
    request: Request, node_id: NodeId, body: NodeReport, market: Market, caller: Signed
) -> HeartbeatReply:
    """The node's agent is alive; the reply names allocations it must stop."""
    _speaks_for(request, market, caller, node_id)
    return market.node_heartbeat(node_id, body, nonce=caller.nonce)


@router.get(wire.NODE_WORK, responses=errors(SIGNED, INPUT, FOUND))
async def work(
    request: Request,
    node_id: NodeId,
    market: Market,
    caller: Signed,
    wait_s: Annotated[float, Query(ge=0, le=LONG_POLL_MAX_S)] = 0.0,
) -> WorkReply:
    """Allocations reserved on the node, held open up to ``wait_s`` until there are any.

    The request waits on the event loop, not in a thread: a held long-poll costs an event,
    and a reservation (or a cancel) in this process wakes it at once. It looks again every
    ``LONG_POLL_CHECK_S`` for what other processes did, and gives up when the agent hangs up.
    """

    def first() -> WorkReply:
        _speaks_for(request, market, caller, node_id)
        market.record_nonce(caller.nonce)  # a signed read spends its nonce first
        return market.agent_work(node_id)

    reply = await run_in_threadpool(first)
    deadline = time.monotonic() + wait_s
    while not (reply.work or reply.stop or market.wakeups.closed):
        left_s = deadline - time.monotonic()
        if left_s <= 0 or await request.is_disconnected():
            break
        seen = market.wakeups.seq(WORK)
        await market.wakeups.wait_async(WORK, seen, min(left_s, LONG_POLL_CHECK_S))
        reply = await run_in_threadpool(lambda: market.agent_work(node_id))
    return reply


@router.post(wire.ALLOCATION_ACCEPTANCE, status_code=204, responses=errors(SIGNED, BODY, FOUND))
def accept(
    request: Request,
    node_id: NodeId,
    allocation_id: AllocationId,
    body: Acceptance,
    market: Market,
    caller: Signed,
) -> None:
    """The agent takes the allocation: it runs from now (409 if the market moved on)."""
    _speaks_for(request, market, caller, node_id)
    market.accept_allocation(node_id, allocation_id, body, nonce=caller.nonce)


@router.post(wire.ALLOCATION_LOG, responses=errors(SIGNED, BODY, FOUND))
def log(
    request: Request,
    node_id: NodeId,
    allocation_id: AllocationId,
    body: LogChunk,
    market: Market,
    caller: Signed,
) -> Control:
    """Output of a running allocation; the reply says whether to stop it."""
    _speaks_for(request, market, caller, node_id)
    return market.allocation_log(node_id, allocation_id, body, nonce=caller.nonce)


@router.post(wire.ALLOCATION_REPORT, status_code=204, responses=errors(SIGNED, BODY, FOUND))
def report(
    request: Request,
    node_id: NodeId,
    allocation_id: AllocationId,
    body: Report,
    market: Market,
    caller: Signed,
) -> None:
    """How the allocation ended, with the provider's usage receipt: settled at once."""
    _speaks_for(request, market, caller, node_id)
    market.report_allocation(node_id, allocation_id, body, nonce=caller.nonce)


@router.get(wire.JOB_LOGS, tags=["jobs"], responses=errors(SIGNED, INPUT, FOUND))
async def logs(
    job_id: JobId,
    market: Market,
    caller: Signed,
    after: Annotated[int, Query(ge=0, le=wire.MAX_ID)] = 0,
    follow: bool = False,
) -> LogPage:
    """The job's output after cursor ``after``; with ``follow``, a stream of JSON lines (one
    per page of output) that ends when the job has ended and all of it has been sent."""

    def first() -> LogPage:
        caller.must_own_job(market.job_owner(job_id), job_id)
        market.record_nonce(caller.nonce)
        return market.job_logs(job_id, after_id=after)

    page = await run_in_threadpool(first)
    if not follow:
        return page

    async def pages() -> AsyncIterator[bytes]:
        # On the event loop between reads: a quiet job's follower holds no thread.
        cursor, deadline = after, time.monotonic() + FOLLOW_MAX_S
        while time.monotonic() < deadline:
            page = await run_in_threadpool(market.job_logs, job_id, after_id=cursor)
            if page.chunks or page.done:
                yield orjson.dumps(page.to_dict()) + b"\n"
            if page.done:
                return
            cursor = page.next_after
            if not page.chunks:
                await asyncio.sleep(FOLLOW_POLL_S)

    return StreamingResponse(pages(), media_type="application/x-ndjson")  # type: ignore[return-value]
