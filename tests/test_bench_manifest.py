"""``depin bench manifest``: the full path parses the envelope, validates its job and spends its
nonce against a table that already holds a day of traffic."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text

from cli import cli
from depin import manifest
from depin.bench import cli as bench_cli
from depin.bench.manifest import (
    DAY_OF_NONCES,
    prefill_nonces,
    run,
    spend_nonces,
    verify_one,
)
from depin.config import Settings
from depin.db.engine import read_session
from depin.errors import ManifestError, ReplayError
from depin.manifest import CLOCK_SKEW_S, MAX_TTL_S, PAYLOAD_TYPE, Envelope, Signature
from depin.market import Marketplace
from depin.spec import JobSpec
from depin.submission import Verifier, load_keys

PREFILLED = 500
JOB = {"name": "bench", "command": ["true"], "resources": {"gpus": 1}, "max_duration_s": 60}


@pytest.fixture
def market(database_url: str) -> Iterator[Marketplace]:
    """A market on SQLite and, when configured, on PostgreSQL."""
    m = Marketplace(Settings.from_env(database_url=database_url))
    yield m
    m.close()


@pytest.fixture
def key(market: Marketplace) -> Ed25519PrivateKey:
    k = Ed25519PrivateKey.generate()
    market.create_account("dev", k.public_key())
    return k


def verifier_for(market: Marketplace, key: Ed25519PrivateKey) -> Verifier:
    with read_session(market.sessions) as s:
        keys = load_keys(s, [manifest.key_id_of(signed(market, key))])
    return Verifier(keys, audience=market.market_id, now=datetime.now(UTC))


def signed(market: Marketplace, key: Ed25519PrivateKey) -> Envelope:
    spec = JobSpec.model_validate(JOB)
    return manifest.sign(spec, key, issuer="dev", audience=market.market_id)


def wire(envelope: Envelope) -> bytes:
    return envelope.to_json().encode()


def account_id(market: Marketplace, key: Ed25519PrivateKey) -> int:
    return verifier_for(market, key).keys[manifest.key_id_of(signed(market, key))].account_id


def utc(stored: datetime | str) -> datetime:
    """A timestamp as read raw: aware from PostgreSQL, naive UTC text from SQLite."""
    if isinstance(stored, datetime):
        return stored.astimezone(UTC)
    return datetime.fromisoformat(stored).replace(tzinfo=UTC)


def test_the_prefill_holds_a_day_of_nonces_expiring_over_the_next_day(
    market: Marketplace, key: Ed25519PrivateKey
) -> None:
    prefill_nonces(market, account_id(market, key), PREFILLED)
    with market.engine.connect() as conn:
        count, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT nonce) FROM nonces")
        ).one()
        first, last = conn.execute(
            text("SELECT min(expires_at), max(expires_at) FROM nonces")
        ).one()
    assert count == distinct == PREFILLED
    now = datetime.now(UTC)
    assert now < utc(first) <= now + timedelta(seconds=CLOCK_SKEW_S + 5)
    day_from_now = now + timedelta(seconds=MAX_TTL_S + CLOCK_SKEW_S)
    assert abs(utc(last) - day_from_now) < timedelta(seconds=MAX_TTL_S / 100)


def test_a_day_of_nonces_is_ten_submissions_a_second() -> None:
    assert DAY_OF_NONCES == 10 * 86_400 == bench_cli.DAY_OF_NONCES


def test_the_command_states_the_prefill() -> None:
    args = ["bench", "manifest", "--envelopes", "10", "--prefilled-nonces", "200"]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "nonces: 200 in the table before the clock started" in result.stdout
    assert "through the full path" in result.stdout


def test_the_full_path_refuses_a_nonce_already_in_the_prefilled_table(
    market: Marketplace, key: Ed25519PrivateKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefill_nonces(market, account_id(market, key), PREFILLED)
    with market.engine.connect() as conn:
        old = conn.execute(text("SELECT nonce FROM nonces LIMIT 1 OFFSET 250")).scalar_one()
    verifier = verifier_for(market, key)
    monkeypatch.setattr(manifest, "new_nonce", lambda: old)
    replayed = verify_one(verifier, wire(signed(market, key)))
    with pytest.raises(ReplayError, match=f"nonce {old} was already used"):
        spend_nonces(market, [replayed])


def test_the_full_path_spends_a_fresh_nonce_once(
    market: Marketplace, key: Ed25519PrivateKey
) -> None:
    prefill_nonces(market, account_id(market, key), PREFILLED)
    verifier = verifier_for(market, key)
    fresh = verify_one(verifier, wire(signed(market, key)))
    spend_nonces(market, [fresh])
    with pytest.raises(ReplayError):
        spend_nonces(market, [fresh])


def test_the_full_path_validates_the_job(market: Marketplace, key: Ed25519PrivateKey) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    claims = {
        "issuer": "dev",
        "audience": market.market_id,
        "nonce": manifest.new_nonce(),
        "issued_at": now.isoformat(),
        "expires_at": (now + timedelta(seconds=60)).isoformat(),
        "job": JOB | {"resources": {"gpus": -1}},  # signed, well-formed claims, a bad job
    }
    payload = manifest.canonical_json(claims)
    signature = Signature(
        manifest.key_id_of(signed(market, key)), key.sign(manifest.pae(PAYLOAD_TYPE, payload))
    )
    bad = Envelope(payload, PAYLOAD_TYPE, (signature,))
    with pytest.raises(ManifestError, match=r"job: resources\.gpus"):
        verify_one(verifier_for(market, key), wire(bad))


def test_the_full_path_parses_the_envelope_as_it_arrives(
    market: Marketplace, key: Ed25519PrivateKey
) -> None:
    with pytest.raises(ManifestError, match="not a DSSE envelope"):
        verify_one(verifier_for(market, key), b'{"payload": "e30="}')


def test_the_figures_state_the_prefill_and_time_both_sides_alike(home: object) -> None:
    data = run(envelopes=30, prefilled=PREFILLED)
    assert data["nonces_prefilled"] == PREFILLED
    assert data["nonces_in_table"] == PREFILLED + data["rounds"] * 30
    assert data["database"] == "sqlite, a fresh file"
    # Both rates from the median round, each side's own; the full path includes Ed25519.
    assert data["full_us_per_envelope"] > data["raw_us_per_envelope"]
    assert data["full_us_per_envelope"] > data["nonce_us_per_envelope"] > 0
