"""``depin.AsyncClient``: the Client's methods, results and errors over asyncio.

Every test runs the real API app in-process: the async client reaches it through
``httpx.ASGITransport``, the sync client through Starlette's ``TestClient``, and
the server's own (embedded) ``Client`` reads the same database. Nothing is mocked
but the network, and in the retry tests a gateway that loses answers.
"""

from __future__ import annotations

import asyncio
import shutil
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from depin import AsyncClient
from depin import keys as keystore
from depin.api import remote, wire
from depin.api.app import create_app
from depin.api.remote import AsyncHttpMarket, HttpMarket
from depin.client import Client
from depin.config import ENV_ACCOUNT, ENV_API_URL, Settings
from depin.errors import (
    ConfigError,
    ConflictError,
    DepinError,
    ForeignAudienceError,
    InputError,
    InsufficientFundsError,
    NotFoundError,
    RemoteError,
)
from depin.manifest import Envelope, sign
from depin.states import JobState
from tests.factories import job, node

BASE_URL = "http://testserver"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # AsyncClient sleeps with asyncio


@dataclass
class Served:
    """The API app over a market in its own DEPIN_HOME, and a client's home beside it."""

    app: FastAPI
    server: Client  # the coordinator's embedded client: the same database, no HTTP
    settings: Settings  # the remote clients' (its keys dir holds a copy of the operator's key)

    def async_client(self, transport: httpx.AsyncBaseTransport | None = None) -> AsyncClient:
        http = httpx.AsyncClient(
            transport=transport or httpx.ASGITransport(app=self.app), base_url=BASE_URL
        )
        market = AsyncHttpMarket(BASE_URL, self.settings.keys_dir, http=http)
        return AsyncClient(settings=self.settings, market=market)

    def sync_client(self) -> Client:
        with warnings.catch_warnings():  # Starlette would rather its TestClient ran on httpx2
            warnings.simplefilter("ignore", UserWarning)
            from starlette.testclient import TestClient

        market = HttpMarket(BASE_URL, self.settings.keys_dir, http=TestClient(self.app))
        return Client(settings=self.settings, market=market)


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    monkeypatch.delenv(ENV_API_URL, raising=False)
    monkeypatch.delenv(ENV_ACCOUNT, raising=False)
    server = Client(settings=Settings.from_env(home=tmp_path / "server"))
    server.init()  # makes the operator's key, which signs deposits
    settings = Settings.from_env(home=tmp_path / "client")
    settings.ensure_home()
    for path in server.settings.keys_dir.iterdir():  # the operator runs the SDK on its machine
        shutil.copy(path, settings.keys_dir / path.name)
    yield Served(create_app(server.market), server, settings)
    server.close()


def seed(client: Client) -> None:
    """A provider with two nodes and a funded developer with three jobs, through ``client``."""
    client.new_key("acme")
    client.register_provider("acme", key="acme")
    client.add_nodes([node(name="b1"), node(name="b2", gpus=4)])
    client.new_key("dev")
    client.create_account("dev", key="dev")
    client.deposit("dev", "100")
    for name in ("a", "b", "c"):
        client.submit(job(name), account="dev")


async def _in(served: Served, work: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    async with served.async_client() as client:
        return await work(client)


def run_async(served: Served, work: Callable[[AsyncClient], Awaitable[Any]]) -> Any:
    """``work`` done by a fresh AsyncClient on a loop of its own (from a sync test)."""
    return asyncio.run(_in(served, work))


# -- the same flow, methods and results ------------------------------------------------------
@pytest.mark.anyio
async def test_the_whole_flow_runs_over_the_async_client(served: Served) -> None:
    async with served.async_client() as client:
        client.new_key("acme")
        provider = await client.register_provider("acme", key="acme")
        added = await client.add_node(node(name="b1"))
        client.new_key("dev")
        await client.create_account("dev", key="dev")
        balance = await client.deposit("dev", "50")
        submitted = await client.submit(job(), account="dev")

        assert provider.kind == "provider" and added.provider == "acme"
        assert balance.credits_posted == 50_000_000
        assert submitted.state == JobState.PENDING
        assert (await client.job(submitted.id)).state == JobState.PENDING
        assert [j.id for j in await client.jobs(account="dev")] == [submitted.id]
        assert (await client.explain(submitted.id)).job == submitted.id
        [held] = await client.balances("dev")
        assert held.debits_pending > 0
        entries = await client.ledger_entries(account="dev", limit=5)
        assert [e.kind for e in entries] == ["deposit", "hold"]
        assert (await client.verify_ledger()).ok
        assert len(await client.search(job())) == 1
        assert (await client.cancel(submitted.id)).state == JobState.CANCELLED
        exported = [entry async for entry in client.export_ledger()]
        assert exported[0]["kind"] == "deposit" and len(exported) >= 3


def test_reads_equal_what_the_sync_and_the_embedded_clients_return(served: Served) -> None:
    sync = served.sync_client()
    seed(sync)
    pending = sync.jobs(account="dev")[0]
    sync.place(pending.id, sync.nodes()[0].id)
    envelope = sync.sign(job("signed"), key="dev")

    def reads(c: Any) -> dict[str, Any]:
        return {
            "account": c.account("dev"),
            "balances": c.balances("dev"),
            "keys": c.registered_keys("dev"),
            "nodes": c.nodes(),
            "jobs": c.jobs(account="dev"),
            "pending": c.jobs(account="dev", state="pending"),
            "job": c.job(pending.id),
            "explain": c.explain(pending.id),
            "search": c.search(job(), sort="score"),
            "allocations": c.allocations(sync.nodes()[0].id),
            "entries": c.ledger_entries(account="dev", limit=4),
            "verify": c.verify_ledger(),
            "check": c.verify_envelope(envelope),
        }

    async def async_reads(c: AsyncClient) -> dict[str, Any]:
        found = {name: await read for name, read in reads(c).items()}
        found["market_id"] = await c.market_id()
        found["export"] = [e async for e in c.export_ledger()]
        return found

    want = reads(sync) | {"market_id": sync.market_id, "export": list(sync.export_ledger())}
    got = run_async(served, async_reads)
    for found in (want, got):  # Claims is a plain class: compare what it says
        check = found.pop("check")
        found["check"] = (check.key_id, check.issuer_verified, check.note, check.claims.nonce)

    assert got == want
    assert got["allocations"] and got["pending"] == [v for v in got["jobs"] if v.state == "pending"]
    embedded = reads(served.server)  # the market itself, without HTTP
    assert {k: got[k] for k in ("jobs", "nodes", "entries", "verify")} == {
        k: embedded[k] for k in ("jobs", "nodes", "entries", "verify")
    }


@pytest.mark.anyio
async def test_the_async_client_signs_keys_and_envelopes_like_the_sync_one(
    served: Served,
) -> None:
    seed(served.sync_client())
    async with served.async_client() as client:
        envelope = await client.sign(job("by-key"), key="dev")
        assert (await client.verify_envelope(envelope)).claims.issuer == "dev"
        assert (await client.verify_envelope(envelope, offline=True)).issuer_verified is False
        assert await client.default_account() == "dev"
        assert await client.signing_key_for("dev") == "dev"

        new, revoked = await client.rotate_key("dev", revoke_old=True, expires_in_days=30)
        assert new.name == "dev-2" and [k.key_id for k in revoked] == [
            k.key_id for k in client.local_keys() if k.name == "dev"
        ]
        assert await client.signing_key_for("dev") == "dev-2"
        submitted = await client.submit(job("after-rotation"))  # signed with the new key
        assert submitted.account == "dev"
        assert (await client.revoke_key("dev-2")).state == "revoked"


# -- errors ----------------------------------------------------------------------------------
def _foreign_envelope(c: Any) -> Envelope:
    private = keystore.load_private("dev", c.settings.keys_dir)
    return sign(job("elsewhere"), private, issuer="dev", audience="another-market")


EXPENSIVE = job("big", max_duration_s=7 * 86400, pricing={"max_usd_per_gpu_hour": 50})


ERRORS: list[tuple[str, type[DepinError], Callable[[Any], Any]]] = [
    ("no such job", NotFoundError, lambda c: c.job(9999)),
    ("no such node", NotFoundError, lambda c: c.allocations(9999)),
    ("deposit to nobody", NotFoundError, lambda c: c.deposit("nobody", "5")),
    ("revoke an unknown key", NotFoundError, lambda c: c.revoke_key("0000000000000000")),
    ("a name taken", ConflictError, lambda c: c.create_account("dev", key="acme")),
    ("an unknown state", InputError, lambda c: c.jobs(state="sleeping")),
    ("a node without fields", InputError, lambda c: c.add_node(provider="acme")),
    ("too little money", InsufficientFundsError, lambda c: c.submit(EXPENSIVE, account="dev")),
    ("another audience", ForeignAudienceError, lambda c: c.verify_envelope(_foreign_envelope(c))),
    ("submitted elsewhere", ForeignAudienceError, lambda c: c.submit(_foreign_envelope(c))),
]


@pytest.mark.parametrize(("case", "error", "call"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_the_same_classes_with_the_same_messages(
    served: Served, case: str, error: type[DepinError], call: Callable[[Any], Any]
) -> None:
    seed(sync := served.sync_client())
    for path in served.settings.keys_dir.iterdir():  # the embedded client holds the same keys
        shutil.copy(path, served.server.settings.keys_dir / path.name)
    with pytest.raises(error) as from_sync:
        call(sync)
    with pytest.raises(error) as from_embedded:
        call(served.server)

    async def attempt(client: AsyncClient) -> None:
        await call(client)

    with pytest.raises(error) as from_async:
        run_async(served, attempt)
    assert type(from_async.value) is type(from_sync.value) is type(from_embedded.value)
    assert str(from_async.value) == str(from_sync.value)


def test_without_a_url_the_async_client_refuses_to_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_API_URL, raising=False)
    with pytest.raises(ConfigError, match="DEPIN_API_URL"):
        AsyncClient()
    monkeypatch.setenv(ENV_API_URL, "http://coordinator:8420/")
    assert AsyncClient().market.url == "http://coordinator:8420"


# -- concurrency and paging ------------------------------------------------------------------
@pytest.mark.anyio
async def test_fifty_concurrent_submissions_all_succeed(served: Served) -> None:
    seed(served.sync_client())
    async with served.async_client() as client:
        submitted = await asyncio.gather(
            *(client.submit(job(f"burst-{n}"), account="dev") for n in range(50))
        )
        listed = await client.jobs(account="dev", limit=1000)

    assert len({v.id for v in submitted}) == 50
    assert all(v.state == JobState.PENDING and v.account == "dev" for v in submitted)
    assert {v.id for v in submitted} <= {v.id for v in listed} and len(listed) == 53
    assert served.server.verify_ledger().ok


def test_lists_follow_cursors_across_pages(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    sync = served.sync_client()
    seed(sync)
    sync.submit_many([job(f"more-{n}") for n in range(8)], account="dev")
    sync.add_nodes([node(name=f"n{n}") for n in range(5)])
    whole = (sync.jobs(account="dev"), sync.nodes(), sync.ledger_entries(account="dev", limit=9))
    monkeypatch.setattr(wire, "MAX_PAGE", 4)  # the client asks in pages of 4

    async def paged(c: AsyncClient) -> tuple[Any, ...]:
        return (
            await c.jobs(account="dev"),
            await c.nodes(),
            await c.ledger_entries(account="dev", limit=9),
            await c.jobs(account="dev", limit=6),
        )

    jobs, nodes, entries, first_six = run_async(served, paged)
    assert (jobs, nodes, entries) == whole
    assert len(jobs) == 11 and len(nodes) == 7 and len(entries) == 9
    assert first_six == whole[0][:6]  # newest first, as one page would be
    assert [e.id for e in entries] == sorted(e.id for e in entries)  # the newest 9, oldest first
    assert entries == served.server.ledger_entries(account="dev", limit=9)


# -- signed requests and retries -------------------------------------------------------------
class LosesAnswers(httpx.AsyncBaseTransport):
    """A gateway in front of the app: the first ``lost`` signed requests reach it (and act),
    but their answers are replaced by a 503, as when a proxy times out."""

    def __init__(self, app: FastAPI, lost: int) -> None:
        self.inner, self.lost = httpx.ASGITransport(app=app), lost
        self.signatures: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        signature = request.headers.get("signature-input")
        if signature is None:  # the public lookups of the registry: let them through
            return response
        self.signatures.append(signature)
        if self.lost > 0:
            self.lost -= 1
            await response.aread()
            return httpx.Response(503, json={"detail": "upstream timed out"})
        return response


class Unreachable(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.tries = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.tries += 1
        raise httpx.ConnectError("connection refused", request=request)


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(remote, "BACKOFF_S", 0.0)


@pytest.mark.anyio
@pytest.mark.usefixtures("no_backoff")
async def test_a_read_whose_answer_was_lost_is_signed_anew_and_retried(served: Served) -> None:
    seed(served.sync_client())
    async with served.async_client() as warm:
        job_id = (await warm.jobs(account="dev"))[0].id
    gateway = LosesAnswers(served.app, lost=2)
    async with served.async_client(gateway) as client:
        view = await client.job(job_id)

    assert view.id == job_id
    # The server spent each try's nonce; it answered the third only because it was new.
    assert len(gateway.signatures) == 3 and len(set(gateway.signatures)) == 3


@pytest.mark.anyio
@pytest.mark.usefixtures("no_backoff")
async def test_a_submission_whose_answer_was_lost_acts_once(served: Served) -> None:
    seed(served.sync_client())
    async with served.async_client() as client:
        envelope = await client.sign(job("once"), key="dev")
    gateway = LosesAnswers(served.app, lost=1)
    async with served.async_client(gateway) as client:
        submitted = await client.submit(envelope, idempotency_key="submit-once")

    assert len(gateway.signatures) == 2  # acted on the first try; the second read its result
    assert [j.name for j in served.server.jobs(account="dev")].count("once") == 1
    assert served.server.job(submitted.id).name == "once"


@pytest.mark.anyio
@pytest.mark.usefixtures("no_backoff")
async def test_only_calls_safe_to_repeat_are_retried_when_the_market_is_unreachable(
    served: Served,
) -> None:
    down = Unreachable()
    async with served.async_client(down) as client:
        with pytest.raises(RemoteError, match="cannot reach the market"):
            await client.market.scheduler_running()  # a GET: tried again, then given up
        assert down.tries == remote.ATTEMPTS

        down.tries = 0
        with pytest.raises(RemoteError):
            await client.market.search(job())  # a POST without a key: tried once
        assert down.tries == 1
