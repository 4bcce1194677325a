"""The market's door for node agents: heartbeats, the long-poll for work, and reports.

A part of ``Marketplace`` (which inherits it), kept apart so the facade stays one
screen per concern: each method is one transaction or read that hands the work to
``depin.agents``, and wakes whoever waits in this process (``depin.wakeups``).
"""

from __future__ import annotations

import time
from datetime import datetime

from depin import agents, views, wakeups
from depin.db.models import utcnow
from depin.limits import LONG_POLL_CHECK_S, LONG_POLL_MAX_S
from depin.nonces import SeenNonce
from depin.runtime.agentwire import (
    Acceptance,
    Control,
    HeartbeatReply,
    LogChunk,
    NodeReport,
    Report,
    WorkReply,
)
from depin.transactions import Transactions
from providers import registry


class AgentDesk(Transactions):
    """What node agents ask of the market (and ``depin job logs``, which reads what they sent)."""

    def heartbeat(self, node_id: int) -> None:
        """The node is alive (an agent that says nothing more of itself)."""
        self._tx(lambda s: registry.heartbeat(s, node_id))

    def node_heartbeat(
        self,
        node_id: int,
        report: NodeReport,
        *,
        nonce: SeenNonce | None = None,
        now: datetime | None = None,
    ) -> HeartbeatReply:
        """An agent is alive and says what its machine has and runs; the reply names what to
        stop and the coordinator's TTL and grace."""
        ttl_s, grace_s, at = self.settings.node_ttl_s, self.settings.node_grace_s, now or utcnow()
        return self._tx(
            lambda s: agents.heartbeat(s, node_id, report, now=at, ttl_s=ttl_s, grace_s=grace_s),
            nonce,
        )

    def agent_work(self, node_id: int, *, wait_s: float = 0.0, limit: int = 16) -> WorkReply:
        """Allocations reserved on the node and running ones to stop, waiting up to ``wait_s``
        for there to be any (a long-poll: a reservation in this process wakes it at once)."""
        deadline = time.monotonic() + max(0.0, min(wait_s, LONG_POLL_MAX_S))
        while True:
            seen = self.wakeups.seq(wakeups.WORK)
            reply = self._read(
                lambda s: agents.work(s, node_id, market_id=self.market_id, limit=limit)
            )
            left_s = deadline - time.monotonic()
            if reply.work or reply.stop or left_s <= 0 or self.wakeups.closed:
                return reply
            self.wakeups.wait(wakeups.WORK, seen, min(left_s, LONG_POLL_CHECK_S))

    def accept_allocation(
        self, node_id: int, allocation_id: int, body: Acceptance, *, nonce: SeenNonce | None = None
    ) -> None:
        """The node's agent takes a reserved allocation (its acceptance receipt verified)."""
        self._tx(
            lambda s: agents.accept(
                s, node_id, allocation_id, body, market_id=self.market_id, now=utcnow()
            ),
            nonce,
        )

    def allocation_log(
        self, node_id: int, allocation_id: int, body: LogChunk, *, nonce: SeenNonce | None = None
    ) -> Control:
        """Output of a running allocation; the reply says whether to stop it."""
        return self._tx(lambda s: agents.append_log(s, node_id, allocation_id, body), nonce)

    def report_allocation(
        self, node_id: int, allocation_id: int, body: Report, *, nonce: SeenNonce | None = None
    ) -> None:
        """How an allocation ended on the node: settled (``agents.report``)."""
        self._tx(
            lambda s: agents.report(
                s, node_id, allocation_id, body, market_id=self.market_id, now=utcnow()
            ),
            nonce,
        )
        self.wakeups.notify(wakeups.JOBS)  # capacity came free: plan again

    def expire_silent_nodes(self, *, now: datetime | None = None) -> list[int]:
        """Nodes silent past TTL + grace go offline and their allocations are lost; returns
        those allocations."""
        timeout_s = self.settings.node_ttl_s + self.settings.node_grace_s
        at = now or utcnow()
        if not self._read(lambda s: agents.anything_silent(s, now=at, timeout_s=timeout_s)):
            return []  # the common case: a read, no write transaction every second
        lost = self._tx(lambda s: agents.expire_silent(s, now=at, timeout_s=timeout_s))
        if lost:
            self.wakeups.notify(wakeups.JOBS)
        return lost

    def job_logs(self, job_id: int, *, after_id: int = 0, limit: int = 1000) -> views.LogPage:
        """A job's streamed output after ``after_id`` (a page's cursor), oldest first."""
        return self._read(lambda s: views.log_page(s, job_id, after_id=after_id, limit=limit))
