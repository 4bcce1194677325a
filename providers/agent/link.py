"""The coordinator as an agent sees it: signed HTTP requests with the provider's key.

The same methods as the embedded market's (``depin.agentdesk.AgentDesk``), so the
agent runs unchanged against either; ``Coordinator`` is that common shape. The
provider's private key stays on this machine: it signs each request (RFC 9421, a
fresh nonce per attempt) and each receipt, and is never sent.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TypeVar

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel

from depin.api import problems, wire
from depin.api.signing import Ed25519Auth
from depin.errors import NotFoundError, RateLimitedError, RemoteError
from depin.limits import HTTP_CONNECT_TIMEOUT_S, HTTP_TIMEOUT_S, LONG_POLL_MAX_S
from depin.runtime.agentwire import (
    Acceptance,
    Control,
    HeartbeatReply,
    LogChunk,
    NodeReport,
    Report,
    WorkReply,
)
from depin.views import NodeView

M = TypeVar("M", bound=BaseModel)


class Coordinator(Protocol):
    """What an agent asks of the market, embedded or over HTTP."""

    @property
    def market_id(self) -> str: ...

    def node(self, node_id: int) -> NodeView: ...

    def node_heartbeat(self, node_id: int, report: NodeReport) -> HeartbeatReply: ...

    def agent_work(self, node_id: int, *, wait_s: float = 0.0) -> WorkReply: ...

    def accept_allocation(self, node_id: int, allocation_id: int, body: Acceptance) -> None: ...

    def allocation_log(self, node_id: int, allocation_id: int, body: LogChunk) -> Control: ...

    def report_allocation(self, node_id: int, allocation_id: int, body: Report) -> None: ...


class HttpCoordinator:
    """The coordinator at ``url``; every request but the market's info is signed."""

    def __init__(self, url: str, private: Ed25519PrivateKey) -> None:
        self.url = url.rstrip("/")
        # Read timeouts leave room for the longest long-poll the server holds.
        timeout = httpx.Timeout(HTTP_TIMEOUT_S + LONG_POLL_MAX_S, connect=HTTP_CONNECT_TIMEOUT_S)
        self.http = httpx.Client(base_url=self.url, timeout=timeout)
        info = self._send("GET", wire.MARKET, wire.MarketInfo, signed=False)
        self.market_id = info.market_id
        self._auth = Ed25519Auth(private, self.market_id)

    def close(self) -> None:
        self.http.close()

    def node(self, node_id: int) -> NodeView:
        return public_node(self.url, node_id, self.http)

    def node_heartbeat(self, node_id: int, report: NodeReport) -> HeartbeatReply:
        path = wire.NODE_HEARTBEAT.format(node_id=node_id)
        # A beat that cannot arrive within an interval or so is a missed beat, not one to wait
        # a long-poll's timeout for: the agent counts its silence from beats that arrived.
        timeout = httpx.Timeout(max(2.0, 2 * report.interval_s), connect=HTTP_CONNECT_TIMEOUT_S)
        return self._send("POST", path, HeartbeatReply, body=report, timeout=timeout)

    def agent_work(self, node_id: int, *, wait_s: float = 0.0) -> WorkReply:
        path = wire.NODE_WORK.format(node_id=node_id)
        return self._send("GET", path, WorkReply, params={"wait_s": wait_s})

    def accept_allocation(self, node_id: int, allocation_id: int, body: Acceptance) -> None:
        path = wire.ALLOCATION_ACCEPTANCE.format(node_id=node_id, allocation_id=allocation_id)
        self._send("POST", path, None, body=body)

    def allocation_log(self, node_id: int, allocation_id: int, body: LogChunk) -> Control:
        path = wire.ALLOCATION_LOG.format(node_id=node_id, allocation_id=allocation_id)
        return self._send("POST", path, Control, body=body)

    def report_allocation(self, node_id: int, allocation_id: int, body: Report) -> None:
        path = wire.ALLOCATION_REPORT.format(node_id=node_id, allocation_id=allocation_id)
        self._send("POST", path, None, body=body)

    def _send(
        self,
        method: str,
        path: str,
        returns: Any,
        *,
        body: BaseModel | None = None,
        params: dict[str, Any] | None = None,
        signed: bool = True,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        """One request; a refusal comes back as the market's own error class and line."""
        try:
            response = self.http.request(
                method,
                path,
                params=params,
                content=None if body is None else body.model_dump_json(),
                headers={"content-type": "application/json"} if body is not None else None,
                auth=self._auth if signed else None,
                timeout=timeout if timeout is not None else self.http.timeout,
            )
        except httpx.TransportError as exc:
            raise RemoteError(f"cannot reach the market at {self.url}: {exc}") from exc
        if response.status_code >= 500:  # a bug or the database away: try again later
            raise RemoteError(f"the market at {self.url} answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise problems.error_of(_json(response), response.status_code)
        if returns is None:
            return None
        if returns is dict:
            return response.json()
        return returns.model_validate_json(response.content)


def public_node(url: str, node_id: int, http: httpx.Client | None = None) -> NodeView:
    """Node ``node_id`` as the market's public node list shows it (no key needed: the agent
    learns from it whose key it must sign with)."""
    base = url.rstrip("/")
    try:
        response = (http or httpx).get(
            base + wire.NODES, params={"cursor": node_id - 1, "limit": 1}, timeout=10
        )
        page = response.json() if response.is_success else None
    except (httpx.HTTPError, ValueError) as exc:
        raise RemoteError(f"cannot reach the market at {base}: {exc}") from exc
    for item in page.get("items", []) if isinstance(page, dict) else []:
        if isinstance(item, dict) and item.get("id") == node_id:
            return NodeView(**item)
    raise NotFoundError(f"no node with id {node_id} at {base}: see `depin node list`")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def retry(call: Any, *, attempts: int, backoff_s: float, until: float | None = None) -> Any:
    """``call()`` until it returns, on ``RemoteError`` (the coordinator away) or a rate limit
    (after the wait it names) at most ``attempts`` times, doubling the sleep; other errors
    (a refusal) pass at once."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except RateLimitedError as exc:
            if attempt == attempts:
                raise
            time.sleep(min(30.0, max(exc.retry_after_s, backoff_s)))
            continue
        except RemoteError:
            if attempt == attempts or (until is not None and time.monotonic() > until):
                raise
        time.sleep(min(30.0, backoff_s * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")
