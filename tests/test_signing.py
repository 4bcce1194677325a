"""Manifests you can trust: DSSE to the letter, Ed25519 to RFC 8032, replays refused."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from cli import cli
from depin import manifest
from depin.client import Client
from depin.config import Settings
from depin.errors import (
    EnvelopeError,
    ManifestError,
    ReplayError,
    RevokedKeyError,
    TamperedEnvelopeError,
    WrongPayloadTypeError,
)
from depin.keys import key_id
from depin.manifest import Envelope
from tests.factories import World, job

# RFC 8032, section 7.1: TEST 1, TEST 2 and TEST 3 (secret key, public key, message, signature).
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS)
def test_the_rfc_8032_test_vectors_verify(
    secret: str, public: str, message: str, signature: str
) -> None:
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert private.sign(bytes.fromhex(message)) == bytes.fromhex(signature)
    Ed25519PublicKey.from_public_bytes(bytes.fromhex(public)).verify(
        bytes.fromhex(signature), bytes.fromhex(message)
    )


KEY = Ed25519PrivateKey.generate()
ENVELOPE = manifest.sign(job(), KEY, issuer="dev", audience="depin-test", ttl_s=3600)


def _known(kid: str) -> list[Ed25519PublicKey]:
    return [KEY.public_key()] if kid == key_id(KEY.public_key()) else []


@settings(max_examples=200, deadline=None)
@given(field=st.sampled_from(["payload", "payloadType", "sig"]), data=st.data())
def test_flipping_any_byte_of_payload_type_or_signature_is_refused(
    field: str, data: st.DataObject
) -> None:
    raw = {
        "payload": bytearray(ENVELOPE.payload),
        "payloadType": bytearray(ENVELOPE.payload_type.encode()),
        "sig": bytearray(ENVELOPE.signatures[0].sig),
    }[field]
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    envelope = Envelope(
        bytes(raw) if field == "payload" else ENVELOPE.payload,
        raw.decode("latin-1") if field == "payloadType" else ENVELOPE.payload_type,
        (
            manifest.Signature(
                ENVELOPE.signatures[0].keyid,
                bytes(raw) if field == "sig" else ENVELOPE.signatures[0].sig,
            ),
        ),
    )
    # A changed type is named as such (it is checked first); any other change breaks the signature.
    expected = (
        (WrongPayloadTypeError, "expected 'application/vnd.depin.job")
        if field == "payloadType"
        else (TamperedEnvelopeError, "signature does not verify")
    )
    with pytest.raises(expected[0], match=expected[1]):
        manifest.verify_signature(envelope, _known)


def test_a_changed_keyid_is_only_a_hint_that_finds_nothing() -> None:
    data = ENVELOPE.to_dict()
    data["signatures"][0]["keyid"] = "0" * 16
    with pytest.raises(EnvelopeError, match="unregistered key"):
        manifest.verify_signature(Envelope.from_dict(data), _known)


def test_claims_are_checked_field_by_field() -> None:
    bad = json.loads(ENVELOPE.payload)
    bad["nonce"] = "short"
    with pytest.raises(ManifestError, match="nonce must be 32 lowercase hex digits"):
        manifest.parse_claims(
            Envelope(json.dumps(bad).encode(), ENVELOPE.payload_type, ENVELOPE.signatures)
        )
    bad = json.loads(ENVELOPE.payload) | {"extra": 1}
    with pytest.raises(ManifestError, match="must hold exactly"):
        manifest.parse_claims(
            Envelope(json.dumps(bad).encode(), ENVELOPE.payload_type, ENVELOPE.signatures)
        )


def test_an_envelope_valid_longer_than_a_day_is_refused() -> None:
    payload = json.loads(ENVELOPE.payload)
    payload["expires_at"] = (
        datetime.fromisoformat(payload["issued_at"]) + timedelta(days=2)
    ).isoformat()
    claims = manifest.parse_claims(
        Envelope(json.dumps(payload).encode(), ENVELOPE.payload_type, ENVELOPE.signatures)
    )
    with pytest.raises(ManifestError, match="exceeds"):
        manifest.check_claims(claims, audience="depin-test")


@pytest.mark.parametrize("window_s", [0, -30])
def test_an_envelope_that_expires_when_or_before_it_is_issued_is_refused(window_s: int) -> None:
    payload = json.loads(ENVELOPE.payload)
    issued = datetime.fromisoformat(payload["issued_at"])
    payload["expires_at"] = (issued + timedelta(seconds=window_s)).isoformat()
    claims = manifest.parse_claims(
        Envelope(json.dumps(payload).encode(), ENVELOPE.payload_type, ENVELOPE.signatures)
    )
    with pytest.raises(ManifestError, match="expires before it is issued"):
        manifest.check_claims(claims, audience="depin-test", now=issued)


def test_an_expired_key_is_refused(world: World) -> None:
    from sqlalchemy import text

    envelope = world.sign(job())
    with world.client.market.engine.begin() as conn:
        conn.execute(
            text("UPDATE account_keys SET not_after = :t"),
            {"t": datetime.now(UTC) - timedelta(hours=1)},
        )
    with pytest.raises(RevokedKeyError, match="expired"):
        world.client.submit(envelope)


def test_a_rotated_account_signs_with_its_new_key_and_the_revoked_one_is_refused(
    world: World,
) -> None:
    old = world.sign(job("old"))
    info, revoked = world.client.rotate_key("dev", revoke_old=True)
    assert [k.state for k in revoked] == ["revoked"]
    with pytest.raises(RevokedKeyError, match="was revoked"):
        world.client.submit(old)
    view = world.client.submit(job("new"), account="dev")
    assert view.key_id == info.key_id  # every job records the key that signed it


def _submit_in_process(home: str, url: str, envelope_json: str, barrier, results) -> None:  # type: ignore[no-untyped-def]
    client = Client(settings=Settings.from_env(home=home, database_url=url))
    assert client.market_id  # migrate and connect before the race starts
    barrier.wait()
    try:
        results.put(("ok", client.market.submit(Envelope.from_json(envelope_json)).id))
    except ReplayError as exc:
        results.put(("replay", str(exc)))
    finally:
        client.close()


def test_a_replay_raced_from_two_processes_is_accepted_exactly_once(
    world: World, database_url: str, home: Path
) -> None:
    envelope = world.sign(job(), ttl_s=600)
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(
            target=_submit_in_process,
            args=(str(home), database_url, envelope.to_json(), barrier, results),
        )
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    outcomes = sorted(results.get(timeout=120)[0] for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert outcomes == ["ok", "replay"]
    assert len(world.client.jobs()) == 1
    assert world.client.verify_ledger().ok


def test_manifest_sign_and_verify_work_offline(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["keys", "new", "ada"]).exit_code == 0
    # No database reachable: signing and verifying must not need one.
    monkeypatch.setenv("DEPIN_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    spec = tmp_path / "job.yaml"
    spec.write_text("name: offline\ncommand: [echo, hi]\nresources: {gpus: 1}\n")
    out = tmp_path / "job.dsse.json"
    signed = runner.invoke(
        cli,
        [
            "manifest",
            "sign",
            str(spec),
            "--key",
            "ada",
            "--as",
            "ada",
            "--audience",
            "depin-x",
            "-o",
            str(out),
        ],
    )
    assert signed.exit_code == 0, signed.output
    verified = runner.invoke(cli, ["manifest", "verify", str(out), "--offline", "--json"])
    assert verified.exit_code == 0, verified.output
    info = json.loads(verified.stdout)
    assert (
        info["signer"] == "ada"
        and info["audience"] == "depin-x"
        and info["job"]["name"] == "offline"
    )
    # Offline, a key proves who holds it, not which account it speaks for.
    assert info["issuer_verified"] is False


def test_private_key_material_never_appears_in_output(home: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    outputs = [runner.invoke(cli, ["keys", "new", "ada", "--json"]).output]
    secret = (home / "keys" / "ada.key").read_text()
    body = "".join(secret.splitlines()[1:-1])
    raw = base64.b64decode(body)[-32:]  # the 32-byte seed at the end of the PKCS#8 structure
    outputs.append(runner.invoke(cli, ["keys", "list", "--json"]).output)
    outputs.append(
        runner.invoke(cli, ["account", "create", "ada", "--key", "ada", "--json"]).output
    )
    outputs.append(runner.invoke(cli, ["keys", "rotate", "ada", "--json"]).output)
    (home / "keys" / "ada.key").chmod(0o644)
    spec = tmp_path / "job.yaml"
    spec.write_text("name: x\ncommand: [echo]\nresources: {gpus: 1}\n")
    refused = runner.invoke(
        cli, ["manifest", "sign", str(spec), "--key", "ada", "-o", str(tmp_path / "o.json")]
    )
    assert refused.exit_code == 1 and "chmod 600" in refused.stderr
    outputs.append(refused.output)
    everything = "".join(outputs)
    assert body not in everything
    assert base64.b64encode(raw).decode() not in everything and raw.hex() not in everything
    assert os.path.exists(home / "keys" / "ada.key")
