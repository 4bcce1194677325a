"""Attacks on the HTTP API, each built from exact signed bytes: every one is refused with 401 or
403 and writes nothing (balances, jobs, ledger entries, nonces: every row of every table)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text
from starlette.testclient import TestClient

from depin.api import wire
from depin.client import Client
from depin.manifest import Envelope
from depin.market import Marketplace
from tests.conftest import signed_request
from tests.factories import World, job, node

Http = TestClient
Attack = Callable[["Scene"], httpx.Request]


class Scene:
    """The market after some honest traffic: dev (with a pending job), acme's nodes, and two
    strangers with registered keys of their own: mallory (a developer) and evil (a provider)."""

    def __init__(self, api: Http, client: Client, world: World, home: Path) -> None:
        self.api, self.client, self.world, self.home = api, client, world, home
        self.job_id = world.submit(job(name="devs-job"))
        client.new_key("mallory")
        client.create_account("mallory", key="mallory")
        client.deposit("mallory", "10")
        client.new_key("evil")
        client.register_provider("evil", key="evil")

    def sign(self, key: str, method: str, path: str, **options: Any) -> httpx.Request:
        return signed_request(self.api, method, path, key, self.home, **options)

    def envelope(self, key: str, account: str) -> dict[str, Any]:
        signed: Envelope = self.client.sign(job(name="attack"), key=key, account=account)
        return signed.to_dict()


@pytest.fixture
def scene(api: Http, api_client: Client, api_world: World, home: Path) -> Scene:
    return Scene(api, api_client, api_world, home)


def everything(market: Marketplace) -> dict[str, Any]:
    """What the market holds: its views (balances, jobs, entries, nodes) and every table's rows."""
    with market.engine.connect() as conn:
        tables = {
            name: sorted(map(repr, conn.execute(text(f'SELECT * FROM "{name}"')).all()))
            for name in inspect(conn).get_table_names()
        }
    return {
        "balances": market.balances(),
        "jobs": market.jobs(limit=1000),
        "entries": market.ledger_entries(limit=10_000),
        "nodes": market.nodes(),
        "tables": tables,
    }


@contextmanager
def nothing_written(market: Marketplace) -> Iterator[None]:
    before = everything(market)
    assert before["tables"]["nonces"], "the honest traffic spent nonces: the check sees them"
    yield
    after = everything(market)
    for part in before:
        assert after[part] == before[part], f"the attack changed {part}"
    assert market.verify_ledger().ok


def refused(scene: Scene, market: Marketplace, request: httpx.Request, status: int) -> str:
    """Send ``request`` and check it is refused with ``status``, changing nothing; its detail."""
    with nothing_written(market):
        response = scene.api.send(request)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status
    return str(response.json()["detail"])


def resent(request: httpx.Request, **changes: Any) -> httpx.Request:
    """The same signed headers on a request with ``content`` and/or ``url`` changed."""
    headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
    headers.update(changes.pop("headers", {}))
    return httpx.Request(
        request.method,
        changes.pop("url", request.url),
        headers=headers,
        content=changes.pop("content", request.content),
    )


def test_the_check_sees_a_single_write(scene: Scene, served_market: Marketplace) -> None:
    with pytest.raises(AssertionError, match="changed"), nothing_written(served_market):
        scene.api.send(scene.sign("dev", "GET", wire.ACCOUNT.format(name="dev")))  # a nonce


# -- a replay: the exact same signed bytes, twice ------------------------------------------------

REPLAYS: dict[str, Attack] = {
    "a deposit": lambda s: s.sign(
        "operator", "POST", wire.DEPOSITS.format(name="mallory"), json={"micro_usd": 1_000_000}
    ),
    "a deposit under an idempotency key": lambda s: s.sign(
        "operator",
        "POST",
        wire.DEPOSITS.format(name="mallory"),
        json={"micro_usd": 1_000_000},
        headers={wire.IDEMPOTENCY_HEADER: "deposit-0001"},
    ),
    "a node": lambda s: s.sign(
        "acme", "POST", wire.NODES, json=node(name="x").model_dump(mode="json")
    ),
    "a job": lambda s: s.sign("dev", "POST", wire.JOBS, json=s.envelope("dev", "dev")),
    "a cancel": lambda s: s.sign("dev", "POST", wire.JOB_CANCEL.format(job_id=s.job_id)),
    "a private read": lambda s: s.sign("dev", "GET", wire.ACCOUNT.format(name="dev")),
}


@pytest.mark.parametrize("what", list(REPLAYS))
def test_a_replayed_signed_request_is_401_and_writes_nothing(
    what: str, scene: Scene, served_market: Marketplace
) -> None:
    request = REPLAYS[what](scene)
    assert scene.api.send(request).is_success
    detail = refused(scene, served_market, request, 401)
    assert detail == "this signed request was already used (a replay): sign it again"


# -- a changed request under a valid signature -----------------------------------------------------


def _deposit(scene: Scene) -> httpx.Request:
    path = wire.DEPOSITS.format(name="mallory")
    return scene.sign("operator", "POST", path, json={"micro_usd": 1_000_000})


MORE = json.dumps({"micro_usd": 999_000_000}).encode()


TAMPERED: dict[str, Callable[[httpx.Request], httpx.Request]] = {
    "a larger amount": lambda r: resent(r, content=MORE),
    "a larger amount and its digest": lambda r: resent(
        r, content=MORE, headers={"content-digest": _digest(MORE)}
    ),
    "another account": lambda r: resent(r, url=str(r.url).replace("mallory", "dev")),
    "another host": lambda r: resent(r, headers={"host": "market.example"}),
    "a later time": lambda r: resent(
        r,
        headers={
            "signature-input": r.headers["signature-input"].replace(";created=", ";created=1")
        },
    ),
}


def _digest(body: bytes) -> str:
    """RFC 9530's Content-Digest of ``body``, as an attacker can compute it."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


@pytest.mark.parametrize("change", list(TAMPERED))
def test_a_changed_request_under_a_valid_signature_is_401_and_writes_nothing(
    change: str, scene: Scene, served_market: Marketplace
) -> None:
    honest = _deposit(scene)
    assert honest.headers["content-digest"] == _digest(honest.content)  # as the attacker makes it
    tampered = TAMPERED[change](honest)
    assert refused(scene, served_market, tampered, 401).startswith("request signature refused")
    assert scene.api.send(honest).is_success  # the signature was good; the change was not


def test_a_signature_copied_onto_another_keys_id_is_401(
    scene: Scene, served_market: Marketplace
) -> None:
    """Mallory signs a deposit with her key but names the operator's key id: it does not verify."""
    honest = scene.sign(
        "operator", "POST", wire.DEPOSITS.format(name="mallory"), json={"micro_usd": 1}
    )
    forged = scene.sign(
        "mallory", "POST", wire.DEPOSITS.format(name="mallory"), json={"micro_usd": 1}
    )
    mallory_kid = forged.headers["signature-input"].split('keyid="')[1].split('"')[0]
    operator_kid = honest.headers["signature-input"].split('keyid="')[1].split('"')[0]
    headers = {
        "signature-input": forged.headers["signature-input"].replace(mallory_kid, operator_kid)
    }
    detail = refused(scene, served_market, resent(forged, headers=headers), 401)
    assert detail.startswith("request signature refused")


# -- a revoked key, an unregistered one, none at all ---------------------------------------------


REVOKED: dict[str, Attack] = {
    "read its account": lambda s: s.sign("dev", "GET", wire.ACCOUNT.format(name="dev")),
    "cancel its job": lambda s: s.sign("dev", "POST", wire.JOB_CANCEL.format(job_id=s.job_id)),
    "register a key of its choosing": lambda s: s.sign(
        "dev",
        "POST",
        wire.ACCOUNT_KEYS.format(name="dev"),
        json={"public_key": s.client.new_key("thief").public_key},
    ),
    "submit a job": lambda s: s.sign("dev", "POST", wire.JOBS, json=s.envelope("dev", "dev")),
}


@pytest.mark.parametrize("what", list(REVOKED))
def test_a_request_signed_by_a_revoked_key_is_401_and_writes_nothing(
    what: str, scene: Scene, served_market: Marketplace
) -> None:
    request = REVOKED[what](scene)  # signed while the key was good
    scene.client.rotate_key("dev", revoke_old=True)
    detail = refused(scene, served_market, request, 401)
    assert "was revoked at" in detail and "sign with an active key" in detail


def test_a_request_signed_by_an_unregistered_key_is_401(
    scene: Scene, served_market: Marketplace
) -> None:
    scene.client.new_key("stranger")
    request = scene.sign("stranger", "GET", wire.ACCOUNT.format(name="dev"))
    assert "is not registered" in refused(scene, served_market, request, 401)


def test_an_unsigned_deposit_is_401(scene: Scene, served_market: Marketplace) -> None:
    request = scene.api.build_request(
        "POST", wire.DEPOSITS.format(name="mallory"), json={"micro_usd": 1_000_000}
    )
    assert "must be signed" in refused(scene, served_market, request, 401)


# -- a known signer where it has no business: 403 --------------------------------------------------

FORBIDDEN: dict[str, tuple[Attack, str]] = {
    "a developer reads another's job": (
        lambda s: s.sign("mallory", "GET", wire.JOB.format(job_id=s.job_id)),
        "is not yours; you sign as 'mallory'",
    ),
    "a developer explains another's job": (
        lambda s: s.sign("mallory", "GET", wire.JOB_EXPLAIN.format(job_id=s.job_id)),
        "is not yours; you sign as 'mallory'",
    ),
    "a developer lists another's jobs": (
        lambda s: s.sign("mallory", "GET", wire.JOBS, params={"account": "dev"}),
        "belongs to 'dev'; you sign as 'mallory'",
    ),
    "a developer reads another's entries": (
        lambda s: s.sign("mallory", "GET", wire.ENTRIES, params={"account": "dev"}),
        "belongs to 'dev'; you sign as 'mallory'",
    ),
    "a developer cancels another's job": (
        lambda s: s.sign("mallory", "POST", wire.JOB_CANCEL.format(job_id=s.job_id)),
        "is not yours; you sign as 'mallory'",
    ),
    "a developer places another's job": (
        lambda s: s.sign(
            "mallory", "POST", wire.JOB_PLACEMENT.format(job_id=s.job_id), json={"node_id": 1}
        ),
        "is not yours; you sign as 'mallory'",
    ),
    "a developer adds a key to another's account": (
        lambda s: s.sign(
            "mallory",
            "POST",
            wire.ACCOUNT_KEYS.format(name="dev"),
            json={"public_key": s.client.new_key("thief").public_key},
        ),
        "belongs to 'dev'; you sign as 'mallory'",
    ),
    "a developer revokes another's key": (
        lambda s: s.sign(
            "mallory",
            "POST",
            wire.KEY_REVOCATION.format(key_id=s.client.registered_keys("dev")[0].key_id),
        ),
        "belongs to 'dev'; you sign as 'mallory'",
    ),
    "a provider adds a node for another provider": (
        lambda s: s.sign(
            "evil", "POST", wire.NODES, json=node("acme", name="x").model_dump(mode="json")
        ),
        "a node of provider 'acme' belongs to 'acme'; you sign as 'evil'",
    ),
    "a provider adds nodes in a batch for another provider": (
        lambda s: s.sign(
            "evil",
            "POST",
            wire.NODE_BATCH,
            json=[
                node("evil", name="a").model_dump(mode="json"),
                node("acme", name="b").model_dump(mode="json"),
            ],
        ),
        "a node of provider 'acme' belongs to 'acme'; you sign as 'evil'",
    ),
    "a provider reads another's allocations": (
        lambda s: s.sign("evil", "GET", wire.NODE_ALLOCATIONS.format(node_id=1)),
        "node 1 belongs to 'acme'; you sign as 'evil'",
    ),
    "a developer deposits to itself": (
        lambda s: s.sign(
            "mallory", "POST", wire.DEPOSITS.format(name="mallory"), json={"micro_usd": 10**9}
        ),
        "only the market operator's key may sign deposits",
    ),
    "a provider deposits to a developer": (
        lambda s: s.sign(
            "acme", "POST", wire.DEPOSITS.format(name="dev"), json={"micro_usd": 10**9}
        ),
        "only the market operator's key may sign deposits",
    ),
    "a developer exports the ledger": (
        lambda s: s.sign("dev", "GET", wire.LEDGER_EXPORT),
        "only the market operator's key may export the whole ledger",
    ),
}


@pytest.mark.parametrize("what", list(FORBIDDEN))
def test_a_signer_acting_for_another_is_403_and_writes_nothing(
    what: str, scene: Scene, served_market: Marketplace
) -> None:
    attack, message = FORBIDDEN[what]
    assert message in refused(scene, served_market, attack(scene), 403)


def test_a_job_submitted_by_another_for_its_issuer_is_403(
    scene: Scene, served_market: Marketplace
) -> None:
    """Dev's honestly signed envelope, submitted by mallory's request: refused, not charged to
    dev by mallory's hand."""
    envelope = scene.envelope("dev", "dev")
    detail = refused(
        scene, served_market, scene.sign("mallory", "POST", wire.JOBS, json=envelope), 403
    )
    assert "mallory" in detail
