"""Provider receipts: the node's own signed word that it took an allocation and what it used.

When a node starts an allocation its provider's key signs an *acceptance*
(allocation, job, node, GPUs, locked price, manifest digest, marketplace);
when the allocation ends, a *usage* receipt (start, end, GPU-seconds, exit
status). Both are DSSE envelopes like manifests. Settlement pays only what a
valid usage receipt attests, so a provider cannot bill for work it did not
sign for, and cannot deny work it did: ``depin ledger verify`` re-checks every
receipt against its allocation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from depin import keys as keystore
from depin.errors import DepinError, EnvelopeError, ManifestError
from depin.manifest import Envelope, Signature, canonical_json, pae, verify_signature

ACCEPTANCE_TYPE = "application/vnd.depin.acceptance+json; version=1"
USAGE_TYPE = "application/vnd.depin.usage+json; version=1"
PAYLOAD_TYPES = {"acceptance": ACCEPTANCE_TYPE, "usage": USAGE_TYPE}


class ReceiptError(DepinError):
    """A provider receipt is missing, does not verify, or does not match its allocation."""


@dataclass(frozen=True, slots=True)
class AllocationFacts:
    """What both receipts of an allocation must agree with."""

    allocation_id: int
    job_id: int
    node_id: int
    gpus: int
    price_micro_usd_per_gpu_hour: int
    manifest_digest: str
    market: str


@dataclass(frozen=True, slots=True)
class ReceiptSigner:
    """Where the node finds its provider's key, and which keys the market would accept."""

    facts: AllocationFacts
    key_ids: tuple[str, ...]  # the provider's active registered keys
    keys_dir_hint: str | None = None  # the driver's keys/ (a local market shares the disk)

    def private_key(self) -> Ed25519PrivateKey | None:
        """The provider's private key on this machine, if any matches a registered key."""
        from depin.config import Settings

        dirs = [Path(self.keys_dir_hint)] if self.keys_dir_hint else []
        dirs.append(Settings.from_env().keys_dir)
        for keys_dir in dirs:
            for info in keystore.list_keys(keys_dir):
                if info.key_id in self.key_ids and info.path.exists():
                    try:
                        return keystore.load_private(str(info.path), keys_dir)
                    except DepinError:
                        continue
        return None


def gpu_seconds(gpus: int, started_at: datetime, ended_at: datetime) -> float:
    """GPU-seconds between two instants, to the millisecond."""
    ms = max(0, math.floor((ended_at - started_at).total_seconds() * 1000))
    return gpus * ms / 1000


def _sign(private: Ed25519PrivateKey, kind: str, claims: dict[str, Any]) -> Envelope:
    payload = canonical_json({"kind": kind, **claims})
    payload_type = PAYLOAD_TYPES[kind]
    sig = private.sign(pae(payload_type, payload))
    return Envelope(payload, payload_type, (Signature(keystore.key_id(private.public_key()), sig),))


def sign_acceptance(
    private: Ed25519PrivateKey, facts: AllocationFacts, *, at: datetime
) -> Envelope:
    return _sign(private, "acceptance", {**asdict(facts), "accepted_at": at.isoformat()})


def sign_usage(
    private: Ed25519PrivateKey,
    facts: AllocationFacts,
    *,
    started_at: datetime,
    ended_at: datetime,
    exit_code: int | None,
) -> Envelope:
    return _sign(
        private,
        "usage",
        {
            **asdict(facts),
            "started_at": started_at.isoformat(),
            "ended_at": ended_at.isoformat(),
            "gpu_seconds": gpu_seconds(facts.gpus, started_at, ended_at),
            "exit_code": exit_code,
        },
    )


@dataclass(frozen=True, slots=True)
class Usage:
    """A verified usage receipt's claims."""

    key_id: str
    started_at: datetime
    ended_at: datetime
    gpu_seconds: float
    exit_code: int | None

    @property
    def duration_ms(self) -> int:
        return max(0, math.floor((self.ended_at - self.started_at).total_seconds() * 1000))


KeyLookup = Callable[[str], Iterable[Ed25519PublicKey]]


def verify(
    envelope_json: str | None, kind: str, facts: AllocationFacts, find_keys: KeyLookup
) -> dict[str, Any]:
    """Check a receipt's signature (by a provider key) and that it speaks of this allocation."""
    if not envelope_json:
        raise ReceiptError(f"allocation {facts.allocation_id}: no {kind} receipt")
    try:
        envelope = Envelope.from_json(envelope_json)
        signature, _ = verify_signature(envelope, find_keys, expected_type=PAYLOAD_TYPES[kind])
        claims = json.loads(envelope.payload)
    except (EnvelopeError, ManifestError, json.JSONDecodeError) as exc:
        raise ReceiptError(f"allocation {facts.allocation_id}: {kind} receipt: {exc}") from exc
    expected = asdict(facts)
    wrong = [k for k, v in expected.items() if claims.get(k) != v]
    if claims.get("kind") != kind or wrong:
        raise ReceiptError(
            f"allocation {facts.allocation_id}: {kind} receipt does not match the allocation "
            f"({', '.join(wrong) or 'kind'})"
        )
    claims["key_id"] = signature.keyid
    return claims


def verify_usage(envelope_json: str | None, facts: AllocationFacts, find_keys: KeyLookup) -> Usage:
    claims = verify(envelope_json, "usage", facts, find_keys)
    try:
        started = datetime.fromisoformat(claims["started_at"])
        ended = datetime.fromisoformat(claims["ended_at"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptError(
            f"allocation {facts.allocation_id}: usage receipt has no valid times"
        ) from exc
    if ended < started or claims.get("gpu_seconds") != gpu_seconds(facts.gpus, started, ended):
        raise ReceiptError(
            f"allocation {facts.allocation_id}: usage receipt's GPU-seconds do not match its times"
        )
    return Usage(claims["key_id"], started, ended, claims["gpu_seconds"], claims.get("exit_code"))
