"""The HTTP API in-process (the app through httpx, no network): problem+json for every refusal,
health, the OpenAPI document, and the SDK over it (the same errors, whole lists, safe retries)."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from depin.api import wire
from depin.api.app import create_app
from depin.api.auth import RateLimiter
from depin.api.remote import HttpMarket
from depin.api.signing import Ed25519Auth
from depin.client import Client
from depin.errors import (
    DatabaseError,
    DepinError,
    RateLimitedError,
    RemoteError,
    UnschedulableError,
)
from depin.keys import load_private
from depin.market import Marketplace
from tests.conftest import API_BASE_URL, server_settings, signed_request
from tests.factories import World, job, node

Http = TestClient


def problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    """The response is an RFC 9457 problem of ``kind`` with ``status``; its document."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["type"] == f"/problems/{kind}"
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    return body  # type: ignore[no-any-return]


def send(api: Http, home: Path, key: str, method: str, path: str, **options: Any) -> httpx.Response:
    return api.send(signed_request(api, method, path, key, home, **options))


# -- each refusal, its status and its problem document ---------------------------------------------


def test_a_body_that_is_not_json_is_400(api: Http) -> None:
    response = api.post(
        wire.OFFERS, content=b"{not json", headers={"content-type": "application/json"}
    )
    body = problem(response, 400, "input")
    assert body["detail"].startswith("the request body is not JSON: ")
    assert "at character 1" in body["detail"]


def test_an_unsigned_private_read_is_401(api: Http, api_world: World) -> None:
    body = problem(api.get(wire.ACCOUNT.format(name="dev")), 401, "unauthenticated")
    assert "must be signed (RFC 9421)" in body["detail"]


def test_reading_another_accounts_data_is_403(api: Http, api_world: World, home: Path) -> None:
    response = send(api, home, "acme", "GET", wire.ACCOUNT.format(name="dev"))
    body = problem(response, 403, "forbidden")
    assert body["detail"] == "account 'dev' belongs to 'dev'; you sign as 'acme'"


def test_an_unknown_job_is_404(api: Http, api_world: World, home: Path) -> None:
    body = problem(send(api, home, "dev", "GET", wire.JOB.format(job_id=99)), 404, "not-found")
    assert body["detail"] == "no job with id 99: see `depin job list`"
    assert body["instance"] == "/v1/jobs/99"


def test_an_idempotency_key_reused_for_another_request_is_409(
    api: Http, api_world: World, home: Path
) -> None:
    path, key = wire.DEPOSITS.format(name="dev"), {"Idempotency-Key": "deposit-0001"}
    first = send(api, home, "operator", "POST", path, json={"micro_usd": 5}, headers=key)
    again = send(api, home, "operator", "POST", path, json={"micro_usd": 5}, headers=key)
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    other = send(api, home, "operator", "POST", path, json={"micro_usd": 6}, headers=key)
    body = problem(other, 409, "conflict")
    assert "'deposit-0001' was already used for a different request" in body["detail"]
    assert api_world.available() == 100_000_000 + 5


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_one_mib_is_413(api: Http, chunked: bool) -> None:
    body = b'{"request": {}, "pad": "' + b"x" * wire.MAX_BODY_BYTES + b'"}'
    content: Any = iter([body[:4096], body[4096:]]) if chunked else body
    response = api.post(wire.OFFERS, content=content, headers={"content-type": "application/json"})
    document = problem(response, 413, "request-too-large")
    assert document["detail"] == f"the request body is larger than {wire.MAX_BODY_BYTES} bytes"


def test_a_body_that_breaks_the_schema_is_422(api: Http) -> None:
    response = api.post(wire.OFFERS, json={"request": {}, "sort": "cheapest"})
    body = problem(response, 422, "input")
    assert body["detail"].startswith("sort: Input should be 'price', 'latency' or 'score'")


def test_a_caller_over_its_rate_is_429_with_retry_after(
    served_market: Marketplace, api_world: World, home: Path
) -> None:
    limiter = RateLimiter(rate_per_s=0.1, burst=2)
    app = create_app(served_market, limiter=limiter)
    with TestClient(app, base_url=API_BASE_URL) as http:
        path = wire.ACCOUNT.format(name="dev")
        assert [send(http, home, "dev", "GET", path).status_code for _ in range(2)] == [200, 200]
        limited = send(http, home, "dev", "GET", path)
        body = problem(limited, 429, "rate-limited")
        assert int(limited.headers["Retry-After"]) >= 1
        assert 0 < body["retry_after_s"] <= 10
        assert "too many requests" in body["detail"]
        # Another key has a bucket of its own.
        assert send(http, home, "acme", "GET", wire.ACCOUNT.format(name="acme")).is_success
        sdk = Client(market=HttpMarket(API_BASE_URL, home / "keys", account="dev", http=http))
        with pytest.raises(RateLimitedError, match="too many requests") as raised:
            sdk.account("dev")
        assert raised.value.retry_after_s > 0


def test_bad_signatures_and_fresh_keys_draw_from_their_address_rate(
    served_market: Marketplace, api_world: World, home: Path
) -> None:
    """A key's bucket is no help against requests that never verify or keys made for the
    occasion: every request pays its address's token first."""
    app = create_app(served_market, address_limiter=RateLimiter(rate_per_s=0.1, burst=3))
    with TestClient(app, base_url=API_BASE_URL) as http:
        unknown = http.get(wire.ACCOUNT.format(name="dev"), headers={"Signature-Input": "x=()"})
        assert unknown.status_code == 401
        statuses = [
            http.get(
                wire.ACCOUNT.format(name="dev"), headers={"Signature-Input": "x=()"}
            ).status_code
            for _ in range(3)
        ]
        assert statuses[-1] == 429


def test_a_key_expiry_without_its_time_zone_is_422_not_500(
    api: Http, api_world: World, home: Path
) -> None:
    before = api_world.client.registered_keys("dev")
    public = api_world.client.new_key("next").public_key
    body = {"public_key": public, "not_after": "2030-01-01T00:00:00"}  # no zone: ambiguous
    response = send(api, home, "dev", "POST", wire.ACCOUNT_KEYS.format(name="dev"), json=body)
    problem(response, 422, "input")
    assert api_world.client.registered_keys("dev") == before


def test_a_request_signed_for_another_market_is_401(
    api: Http, api_world: World, home: Path
) -> None:
    request = api.build_request("GET", wire.ACCOUNT.format(name="dev"))
    Ed25519Auth(load_private("dev", home / "keys"), "depin-elsewhere").sign(request)
    body = problem(api.send(request), 401, "unauthenticated")
    assert "tag" in body["detail"]


def test_rate_limits_from_the_environment_must_be_positive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from depin.api.server import ENV_RATE_PER_KEY, _limiter
    from depin.errors import ConfigError

    for text in ("0", "-5", "many", "inf"):
        monkeypatch.setenv(ENV_RATE_PER_KEY, text)
        with pytest.raises(ConfigError, match=ENV_RATE_PER_KEY):
            _limiter(ENV_RATE_PER_KEY, 100.0)


def test_health_and_readiness(api: Http) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    ready = api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_the_openapi_document_lists_every_route(api: Http) -> None:
    document = api.get("/openapi.json").json()
    paths = {p: set(ops) for p, ops in document["paths"].items()}
    expected = {
        wire.MARKET: {"get"},
        wire.SCHEDULER: {"get"},
        wire.ACCOUNTS: {"post"},
        wire.ACCOUNT: {"get"},
        wire.DEPOSITS: {"post"},
        wire.ACCOUNT_KEYS: {"get", "post"},
        wire.KEYS: {"get"},
        wire.KEY_REVOCATION: {"post"},
        wire.BALANCES: {"get"},
        wire.NODES: {"get", "post"},
        wire.NODE_BATCH: {"post"},
        wire.NODE_ALLOCATIONS: {"get"},
        wire.NODE_HEARTBEAT: {"post"},
        wire.NODE_WORK: {"get"},
        wire.ALLOCATION_ACCEPTANCE: {"post"},
        wire.ALLOCATION_LOG: {"post"},
        wire.ALLOCATION_REPORT: {"post"},
        wire.OFFERS: {"post"},
        wire.JOBS: {"get", "post"},
        wire.JOB_BATCH: {"post"},
        wire.JOB: {"get"},
        wire.JOB_EXPLAIN: {"get"},
        wire.JOB_PLACEMENT: {"post"},
        wire.JOB_CANCEL: {"post"},
        wire.JOB_LOGS: {"get"},
        wire.ENTRIES: {"get"},
        wire.LEDGER_VERIFY: {"get"},
        wire.LEDGER_EXPORT: {"get"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    assert paths == expected
    assert document["info"]["title"] == "depin"


# -- the SDK over HTTP raises what the market raises -----------------------------------------------


def _over_budget(c: Client) -> object:
    return c.submit(job(pricing={"budget_usd": 5000}, max_duration_s=604800), account="dev")


def _replayed(c: Client) -> object:
    envelope = c.sign(job(name="once"), key="dev", account="dev")
    c.submit(envelope)
    return c.submit(envelope)


def _tampered(c: Client) -> object:
    signed = c.sign(job(name="honest"), key="dev", account="dev")
    forged = dataclasses.replace(signed, payload=signed.payload.replace(b"honest", b"forged"))
    return c.submit(forged)


def _unregistered(c: Client) -> object:
    key = c.new_key(f"stranger-{uuid.uuid4().hex[:8]}").name
    return c.submit(c.sign(job(), key=key, account="dev"))


FAILURES: dict[str, Callable[[Client], object]] = {
    "unknown job": lambda c: c.job(99),
    "unknown account": lambda c: c.account("nobody"),
    "explain an unknown job": lambda c: c.explain(99),
    "deposit to nobody": lambda c: c.deposit("nobody", "5"),
    "a taken account name": lambda c: c.create_account("dev", key="acme"),
    "a bad account name": lambda c: c.create_account("Bad Name!", key="dev"),
    "a node for a developer": lambda c: c.add_node(node(provider="dev")),
    "more than the balance": _over_budget,
    "no node can take it": lambda c: c.submit(job(resources={"gpus": 64}), account="dev"),
    "a replayed envelope": _replayed,
    "a tampered envelope": _tampered,
    "an envelope by an unregistered key": _unregistered,
    "another market's envelope": lambda c: c.submit(
        c.sign(job(), key="dev", account="dev", audience="depin-elsewhere")
    ),
    "placed on a node that is too small": lambda c: c.place(
        c.submit(job(resources={"gpus": 4}), account="dev").id, 2
    ),
    "a cancelled job cancelled again": lambda c: c.cancel(
        c.cancel(c.submit(job(), account="dev").id).id
    ),
    "a key that is not registered": lambda c: c.revoke_key("0123456789abcdef"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_the_sdk_over_http_raises_the_markets_own_error(
    failure: str, api_world: World, api_client: Client, served_market: Marketplace, home: Path
) -> None:
    local = Client(settings=server_settings(home), market=served_market)
    with pytest.raises(DepinError) as here:
        FAILURES[failure](local)
    with pytest.raises(DepinError) as there:
        FAILURES[failure](api_client)
    assert type(there.value) is type(here.value)
    assert _same(str(there.value)) == _same(str(here.value))
    if isinstance(here.value, UnschedulableError):
        assert there.value.reasons == here.value.reasons  # type: ignore[attr-defined]


def _same(message: str) -> str:
    """A message with the ids that differ between two runs of the same failure left out."""
    return re.sub(r"\b(job|envelope|nonce|key) [0-9a-f-]+\b", r"\1 <id>", message)


def test_an_answer_outside_the_contract_is_a_remote_error(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("depin.api.remote.BACKOFF_S", 0.0)
    proxy = httpx.MockTransport(lambda r: httpx.Response(502, text="<html>bad gateway</html>"))
    sdk = HttpMarket(API_BASE_URL, home / "keys", http=httpx.Client(transport=proxy))
    with pytest.raises(RemoteError, match="HTTP 502 without a problem document"):
        sdk.registered_keys(["0123456789abcdef"])


# -- lists longer than a page come back whole ------------------------------------------------------


@pytest.fixture
def requests_seen(api: Http) -> Iterator[list[httpx.Request]]:
    seen: list[httpx.Request] = []
    api.event_hooks["request"].append(seen.append)
    yield seen


def test_a_list_longer_than_a_page_is_returned_whole(
    api_world: World,
    api_client: Client,
    served_market: Marketplace,
    requests_seen: list[httpx.Request],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for n in range(5):
        api_world.submit(job(name=f"job-{n}"))
    monkeypatch.setattr(wire, "MAX_PAGE", 2)  # the SDK asks for pages of two
    requests_seen.clear()

    assert api_client.nodes() == served_market.nodes()
    assert [n.id for n in api_client.nodes()] == [1, 2, 3, 4]
    assert [j.id for j in api_client.jobs(account="dev")] == [5, 4, 3, 2, 1]
    assert [j.id for j in api_client.jobs(account="dev", limit=3)] == [5, 4, 3]
    entries = served_market.ledger_entries(account="dev", limit=100)
    assert len(entries) == 6  # a deposit and five holds
    assert api_client.ledger_entries(account="dev") == entries
    assert api_client.ledger_entries(account="dev", limit=3) == entries[-3:]

    pages = [r for r in requests_seen if r.url.path in (wire.NODES, wire.JOBS, wire.ENTRIES)]
    assert all(r.url.params["limit"] == "2" for r in pages if "limit" in r.url.params)
    assert len([r for r in pages if r.url.path == wire.NODES]) == 2 * 3  # 4 nodes, twice


# -- a retry is signed anew, under the same idempotency key ----------------------------------------


def _nonce(request: httpx.Request) -> str:
    found = re.search(r'nonce="([0-9a-f]+)"', request.headers["signature-input"])
    assert found is not None
    return found.group(1)


def _deposit_request() -> httpx.Request:
    return httpx.Request(
        "POST",
        API_BASE_URL + wire.DEPOSITS.format(name="dev"),
        json={"micro_usd": 5},
        headers={wire.IDEMPOTENCY_HEADER: "deposit-0001"},
    )


def test_ed25519auth_signs_each_attempt_with_a_new_nonce(
    home: Path, api: Http, api_world: World
) -> None:
    """Each attempt is a fresh request (``HttpMarket`` builds one per try) that the auth flow
    signs with a nonce of its own; the idempotency key is the request's and stays."""
    auth = Ed25519Auth(load_private("operator", home / "keys"), api_world.client.market_id)
    first = next(auth.sync_auth_flow(_deposit_request()))
    again = next(auth.sync_auth_flow(_deposit_request()))
    assert _nonce(again) != _nonce(first)
    assert again.headers["signature"] != first.headers["signature"]
    assert again.headers["content-digest"] == first.headers["content-digest"]
    assert again.headers[wire.IDEMPOTENCY_HEADER] == first.headers[wire.IDEMPOTENCY_HEADER]
    assert api.send(first).is_success and api.send(again).is_success  # the same deposit, once
    assert api.send(first).status_code == 401  # but the first signature only once


def test_ed25519auth_signs_the_same_request_again_with_a_new_nonce(
    home: Path, api: Http, api_world: World
) -> None:
    auth = Ed25519Auth(load_private("operator", home / "keys"), api_world.client.market_id)
    request = _deposit_request()
    assert api.send(request, auth=auth).is_success
    assert api.send(request, auth=auth).is_success  # the same deposit, signed anew
    assert api_world.available() == 100_000_005


def test_a_deposit_whose_answer_was_lost_is_retried_once_and_counted_once(
    api: Http, api_world: World, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt reaches the market and commits, but a proxy answers 503: the SDK
    signs the retry anew (a new nonce, else it would be a replay) under the same key."""
    monkeypatch.setattr("depin.api.remote.BACKOFF_S", 0.0)
    attempts: list[httpx.Request] = []

    def lossy_proxy(request: httpx.Request) -> httpx.Response:
        answer = _forward(api, request)
        if not request.url.path.endswith("/deposits"):
            return answer
        attempts.append(request)
        return httpx.Response(503, text="upstream timed out") if len(attempts) == 1 else answer

    http = httpx.Client(transport=httpx.MockTransport(lossy_proxy))
    sdk = Client(market=HttpMarket(API_BASE_URL, home / "keys", http=http))
    before = len(api_world.client.ledger_entries(account="dev"))

    balance = sdk.deposit("dev", "5")

    assert len(attempts) == 2
    first, retry = attempts
    assert _nonce(first) != _nonce(retry)
    assert first.headers[wire.IDEMPOTENCY_HEADER] == retry.headers[wire.IDEMPOTENCY_HEADER]
    assert balance.available == 105_000_000 == api_world.available()
    assert len(api_world.client.ledger_entries(account="dev")) == before + 1


def test_a_request_without_an_idempotency_key_is_not_retried(
    api: Http, api_world: World, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancel carries no idempotency key: after a 503 the SDK reports it instead of trying
    again, which could act twice."""
    monkeypatch.setattr("depin.api.remote.BACKOFF_S", 0.0)
    job_id = api_world.submit(job())
    cancels: list[httpx.Request] = []

    def busy_on_cancel(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/cancel"):
            return _forward(api, request)
        cancels.append(request)
        busy = {"type": "/problems/database", "title": "-", "status": 503, "detail": "busy"}
        return httpx.Response(503, json=busy)

    http = httpx.Client(transport=httpx.MockTransport(busy_on_cancel))
    sdk = Client(market=HttpMarket(API_BASE_URL, home / "keys", account="dev", http=http))
    with pytest.raises(DatabaseError, match="busy"):
        sdk.cancel(job_id)
    assert len(cancels) == 1
    assert api_world.client.job(job_id).state == "pending"


def _forward(api: Http, request: httpx.Request) -> httpx.Response:
    """Send ``request``'s exact bytes on to the app; its answer as a fresh response."""
    answer = api.send(
        httpx.Request(request.method, request.url, headers=request.headers, content=request.content)
    )
    return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)
