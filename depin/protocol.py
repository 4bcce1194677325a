"""The SDK's seam: the operations a ``depin.Client`` needs from a market.

The in-process ``Marketplace`` implements it; a market over HTTP implements
the same protocol, so the SDK, the CLI and their tests run unchanged over
either. Private keys never cross it: only public keys and signed envelopes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
    LogPage,
    NodeView,
)
from scheduler.search import Hit


@runtime_checkable
class Market(Protocol):
    """A depin marketplace, as the SDK sees it."""

    @property
    def market_id(self) -> str:
        """The audience every envelope for this market is signed for."""
        ...

    def close(self) -> None: ...

    # -- accounts and keys
    def create_account(
        self,
        name: str,
        public_key: Ed25519PublicKey,
        *,
        kind: str = "developer",
        idempotency_key: str | None = None,
    ) -> AccountView: ...

    def deposit(
        self, name: str, amount_micro_usd: int, *, idempotency_key: str | None = None
    ) -> Balance: ...

    def account(self, name: str) -> AccountView: ...

    def balances(self, account: str | None = None) -> list[Balance]: ...

    def registered_keys(self, key_ids: Sequence[str]) -> list[KeyView]: ...

    def keys_of(self, account: str) -> list[KeyView]: ...

    def rotate_key(
        self,
        account: str,
        public_key: Ed25519PublicKey,
        *,
        not_after: datetime | None = None,
        revoke_old: bool = False,
    ) -> tuple[KeyView, list[KeyView]]: ...

    def revoke_key(self, key_id: str) -> KeyView: ...

    # -- nodes
    def add_node(self, spec: NodeSpec, *, idempotency_key: str | None = None) -> NodeView: ...

    def add_nodes(self, specs: Sequence[NodeSpec]) -> list[int]: ...

    def nodes(self) -> list[NodeView]: ...

    def search(self, request: JobSpec, *, sort: str = "price", limit: int = 20) -> list[Hit]: ...

    # -- jobs
    def submit(
        self, envelope: Envelope, *, now: datetime | None = None, idempotency_key: str | None = None
    ) -> JobView: ...

    def submit_many(
        self,
        envelopes: Sequence[Envelope],
        *,
        now: datetime | None = None,
        idempotency_key: str | None = None,
    ) -> list[int]: ...

    def jobs(
        self, *, account: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[JobView]: ...

    def job(self, job_id: int) -> JobView: ...

    def explain(self, job_id: int) -> ExplainView: ...

    def place(
        self, job_id: int, node_id: int, *, idempotency_key: str | None = None
    ) -> list[int]: ...

    def cancel(self, job_id: int) -> JobView: ...

    def job_logs(self, job_id: int, *, after_id: int = 0, limit: int = 1000) -> LogPage: ...

    def allocations(self, node_id: int, *, limit: int = 100) -> list[AllocationView]: ...

    def scheduler_running(self) -> bool: ...

    # -- ledger
    def ledger_entries(
        self, *, account: str | None = None, limit: int = 100
    ) -> list[EntryView]: ...

    def export_ledger(self) -> Iterator[dict[str, Any]]: ...

    def verify_ledger(self) -> VerifyReport: ...
