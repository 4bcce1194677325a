"""DSSE envelopes signed with Ed25519: what verifies, and what is refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin import manifest
from depin.errors import (
    ExpiredEnvelopeError,
    ForeignAudienceError,
    ManifestError,
    NotYetValidEnvelopeError,
    TamperedEnvelopeError,
    UnknownKeyError,
    WrongPayloadTypeError,
)
from depin.keys import key_id
from depin.manifest import Envelope
from tests.factories import job

AUDIENCE = "depin-test-market"
KEY = Ed25519PrivateKey.generate()


def known(kid: str) -> list:  # type: ignore[type-arg]
    return [KEY.public_key()] if kid == key_id(KEY.public_key()) else []


def signed(**kwargs) -> Envelope:  # type: ignore[no-untyped-def]
    return manifest.sign(job(), KEY, issuer="dev", audience=AUDIENCE, **kwargs)


def test_pae_matches_the_dsse_specification() -> None:
    assert manifest.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_a_signed_envelope_verifies_and_carries_its_claims() -> None:
    env = Envelope.from_json(signed().to_json())
    sig, _ = manifest.verify_signature(env, known)
    claims = manifest.parse_claims(env)
    manifest.check_claims(claims, audience=AUDIENCE)
    assert sig.keyid == key_id(KEY.public_key())
    assert claims.issuer == "dev" and claims.job == job()
    assert len(claims.nonce) == 32
    assert claims.expires_at - claims.issued_at == timedelta(seconds=manifest.DEFAULT_TTL_S)
    assert env.digest.startswith("sha256:")


def test_the_envelope_has_exactly_the_dsse_fields() -> None:
    data = json.loads(signed().to_json())
    assert set(data) == {"payload", "payloadType", "signatures"}
    assert data["payloadType"] == "application/vnd.depin.job+json; version=1"
    assert set(data["signatures"][0]) == {"keyid", "sig"}


def _flip(b64: str) -> str:
    raw = bytearray(base64.b64decode(b64))
    raw[len(raw) // 2] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize("field", ["payload", "sig"])
def test_a_flipped_bit_is_refused(field: str) -> None:
    data = json.loads(signed().to_json())
    if field == "payload":
        data["payload"] = _flip(data["payload"])
    else:
        data["signatures"][0]["sig"] = _flip(data["signatures"][0]["sig"])
    with pytest.raises(TamperedEnvelopeError):
        manifest.verify_signature(Envelope.from_dict(data), known)


def test_a_changed_payload_type_is_refused() -> None:
    data = json.loads(signed().to_json())
    data["payloadType"] = "application/vnd.depin.job+json; version=2"
    with pytest.raises(WrongPayloadTypeError):
        manifest.verify_signature(Envelope.from_dict(data), known)


def test_an_unregistered_key_is_refused() -> None:
    other = manifest.sign(job(), Ed25519PrivateKey.generate(), issuer="dev", audience=AUDIENCE)
    with pytest.raises(UnknownKeyError, match="unregistered key"):
        manifest.verify_signature(other, known)


def test_expired_future_and_foreign_envelopes_are_refused() -> None:
    now = datetime.now(UTC)
    old = manifest.parse_claims(signed(ttl_s=60, now=now - timedelta(hours=1)))
    with pytest.raises(ExpiredEnvelopeError, match="--ttl-s"):
        manifest.check_claims(old, audience=AUDIENCE, now=now)
    future = manifest.parse_claims(signed(now=now + timedelta(hours=1)))
    with pytest.raises(NotYetValidEnvelopeError):
        manifest.check_claims(future, audience=AUDIENCE, now=now)
    with pytest.raises(ForeignAudienceError):
        manifest.check_claims(manifest.parse_claims(signed()), audience="another-market")


def test_the_clock_skew_allowance_is_sixty_seconds() -> None:
    now = datetime.now(UTC)
    claims = manifest.parse_claims(signed(ttl_s=60, now=now - timedelta(seconds=100)))
    manifest.check_claims(claims, audience=AUDIENCE, now=now)  # expired 40 s ago: within skew
    late = manifest.parse_claims(signed(ttl_s=60, now=now - timedelta(seconds=121)))
    with pytest.raises(ExpiredEnvelopeError):  # expired 61 s ago: past the allowance
        manifest.check_claims(late, audience=AUDIENCE, now=now)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"payload": "x"}',
        '{"payload": "!!", "payloadType": "t", "signatures": [{"keyid": "k", "sig": "AA=="}]}',
        '{"payload": "", "payloadType": "t", "signatures": []}',
        "[" * 100_000 + "]" * 100_000,
        '{"payload": "", "payloadType": "t", "signatures": [{"keyid": "a\\nb", "sig": "AA=="}]}',
        '{"payload": "", "payloadType": "t", "signatures": [{"keyid": {"k": 1}, "sig": "AA=="}]}',
        '{"payload": "", "payloadType": "t", "signatures": ['
        + ",".join(['{"keyid": "k", "sig": "AA=="}'] * 9)
        + "]}",
        '{"payload": "", "payloadType": "t", "signatures": [7]}',
    ],
)
def test_malformed_envelopes_are_clear_errors(text: str) -> None:
    with pytest.raises(ManifestError):
        Envelope.from_json(text)


def test_ttl_is_bounded() -> None:
    from depin.errors import InputError

    with pytest.raises(InputError, match="ttl_s"):
        signed(ttl_s=manifest.MAX_TTL_S + 1)
