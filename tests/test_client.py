"""The SDK over the Market protocol: who may sign for whom, checked before anything is believed,
and as few round trips to the market as a submission needs."""

from __future__ import annotations

import base64
import json
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import event

from depin.client import Client
from depin.errors import (
    ForeignAudienceError,
    RevokedKeyError,
    TamperedEnvelopeError,
    UnknownKeyError,
)
from depin.manifest import Envelope
from tests.factories import World, job


def _mallory(world: World) -> Envelope:
    """An envelope Mallory signs with her own (registered) key, claiming to be the developer."""
    world.client.new_key("mallory")
    world.client.create_account("mallory", key="mallory")
    return world.client.sign(job(), key="mallory", account=world.developer)


def test_verifying_against_the_market_refuses_a_key_of_another_account(world: World) -> None:
    with pytest.raises(UnknownKeyError, match="registered to 'mallory'"):
        world.client.verify_envelope(_mallory(world))


def test_verifying_offline_says_the_issuer_is_unverified(world: World) -> None:
    check = world.client.verify_envelope(_mallory(world), offline=True)
    assert check.claims.issuer == world.developer
    assert check.issuer_verified is False and "offline" in check.note


def test_verifying_against_the_market_confirms_the_issuers_own_active_key(world: World) -> None:
    check = world.client.verify_envelope(world.sign(job()))
    assert check.issuer_verified is True and check.claims.issuer == world.developer


def test_verifying_refuses_a_revoked_key(world: World) -> None:
    envelope = world.sign(job())
    world.client.revoke_key(world.developer)
    with pytest.raises(RevokedKeyError, match="was revoked"):
        world.client.verify_envelope(envelope)


def test_verifying_refuses_an_envelope_for_another_market(world: World) -> None:
    with pytest.raises(ForeignAudienceError, match="depin-elsewhere"):
        world.client.verify_envelope(world.sign(job(), audience="depin-elsewhere"))


def _forged(world: World, issuer: str) -> Envelope:
    """A well-formed envelope naming ``issuer`` whose signature is garbage."""
    data = world.sign(job()).to_dict()
    payload = json.loads(base64.b64decode(data["payload"]))
    payload["issuer"] = issuer
    data["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    return Envelope.from_dict(data)


def test_submitting_an_envelope_as_someone_verifies_it_before_reading_its_issuer(
    world: World,
) -> None:
    # The payload's claims are a stranger's until the signature holds: the refusal is the
    # signature's, not a comparison with an issuer nobody has verified.
    with pytest.raises(TamperedEnvelopeError):
        world.client.submit(_forged(world, "someone-else"), account="bob")


class CountingMarket:
    """The real market, with a count of the calls made to it."""

    def __init__(self, market: Any) -> None:
        self._market = market
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._market, name)
        if callable(value):
            self.calls[name] += 1
        return value


def test_a_submission_finds_its_account_and_key_in_one_read(world: World) -> None:
    for n in range(3):  # local keys of other accounts the client must not ask about one by one
        world.client.new_key(f"other-{n}")
    counted = CountingMarket(world.client.market)
    client = Client(settings=world.client.settings, market=counted)  # type: ignore[arg-type]
    client.submit(job())  # no --as: the one developer account with a local key
    reads = {k: v for k, v in counted.calls.items() if k not in ("submit", "market_id")}
    assert reads == {"registered_keys": 1}


def test_rotating_with_revoke_old_is_one_write_transaction(sqlite_world: World) -> None:
    world = sqlite_world
    engine = world.client.market.engine  # type: ignore[attr-defined]
    writes: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement == "BEGIN IMMEDIATE":  # how every SQLite write transaction starts
            writes.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        info, revoked = world.client.rotate_key(world.developer, revoke_old=True)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(writes) == 1
    keys = {k.key_id: k.state for k in world.client.registered_keys(world.developer)}
    assert keys[info.key_id] == "active" and [k.key_id for k in revoked] != []
    assert all(keys[k.key_id] == "revoked" for k in revoked)
