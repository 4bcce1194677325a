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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from depin import keys as keystore
from depin.errors import DepinError, EnvelopeError, ManifestError
from depin.manifest import Envelope, Signature, canonical_json, pae, verify_signature

ACCEPTANCE_TYPE = "application/vnd.depin.acceptance+json; version=1"
USAGE_TYPE = "application/vnd.depin.usage+json; version=1"
PAYLOAD_TYPES = {"acceptance": ACCEPTANCE_TYPE, "usage": USAGE_TYPE}
_OWN_FIELDS = {
    "acceptance": ("accepted_at",),
    "usage": ("started_at", "ended_at", "gpu_seconds", "exit_code"),
}

# Far beyond any job's max_duration_s (7 days): a sanity bound on a stranger's claim, which
# keeps the arithmetic on it small; the hold still bounds what is paid.
MAX_RECEIPT_DURATION_S = 31 * 24 * 3600
_MAX_DURATION = timedelta(seconds=MAX_RECEIPT_DURATION_S)
# A process's 0..255, or a negative signal number as subprocess reports a kill.
EXIT_CODE_MIN, EXIT_CODE_MAX = -255, 255
# Years a receipt can speak of; far from datetime's limits, where conversions overflow.
EARLIEST_RECEIPT_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_RECEIPT_TIME = datetime(2100, 1, 1, tzinfo=UTC)
MAX_MESSAGE_CHARS = 300
SHOWN_TEXT_CHARS = 40


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
    # The allocation's fence token, where a node agent runs it: a receipt for an earlier
    # attempt does not verify for a later one.
    fence: str | None = None


def fact_claims(facts: AllocationFacts) -> dict[str, Any]:
    """The facts as a receipt's payload carries them (no fence field where there is none)."""
    claims = asdict(facts)
    if claims["fence"] is None:
        del claims["fence"]
    return claims


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
    return _sign(private, "acceptance", {**fact_claims(facts), "accepted_at": at.isoformat()})


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
            **fact_claims(facts),
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
    """Check a receipt's signature (by a provider key), that it speaks of this allocation,
    and every field it holds.

    A receipt is a stranger's input: whatever it holds, only ``ReceiptError`` comes out.
    """
    claims = _signed_claims(envelope_json, kind, facts, find_keys)
    where = f"allocation {facts.allocation_id}: {kind} receipt"
    if kind == "usage":
        _usage(claims, facts, where)
    else:
        _instant(claims, "accepted_at", where)
    return claims


def verify_usage(envelope_json: str | None, facts: AllocationFacts, find_keys: KeyLookup) -> Usage:
    """A verified usage receipt's claims; ``ReceiptError`` for anything else."""
    claims = _signed_claims(envelope_json, "usage", facts, find_keys)
    return _usage(claims, facts, f"allocation {facts.allocation_id}: usage receipt")


def _signed_claims(
    envelope_json: str | None, kind: str, facts: AllocationFacts, find_keys: KeyLookup
) -> dict[str, Any]:
    """The payload of a receipt signed by a provider key: a JSON object with exactly the
    fields of its kind, and the allocation's facts, of the same types, in them."""
    where = f"allocation {facts.allocation_id}: {kind} receipt"
    if not envelope_json:
        raise ReceiptError(f"allocation {facts.allocation_id}: no {kind} receipt")
    try:
        envelope = Envelope.from_json(envelope_json)
        signature, _ = verify_signature(envelope, find_keys, expected_type=PAYLOAD_TYPES[kind])
    except (EnvelopeError, ManifestError) as exc:
        raise _refused(where, str(exc)) from exc
    except RecursionError as exc:
        raise _refused(where, "envelope is not valid JSON (nested too deeply)") from exc
    try:
        claims = json.loads(envelope.payload)
    except json.JSONDecodeError as exc:
        raise _refused(where, f"payload is not JSON ({exc})") from exc
    except (ValueError, RecursionError) as exc:  # ValueError: bad UTF-8, an integer too long
        raise _refused(
            where, "payload is not JSON within limits (bad UTF-8, too deep or a number too long)"
        ) from exc
    if not isinstance(claims, dict):
        raise _refused(where, f"payload must be a JSON object (got {_shown(claims)})")
    expected = fact_claims(facts)
    # Types too: a JSON 7.0 or true equals 7 or 1 in Python, but it is not what was signed for.
    wrong = [k for k, v in expected.items() if type(claims.get(k)) is not type(v) or claims[k] != v]
    if claims.get("kind") != kind or wrong:
        raise ReceiptError(
            f"allocation {facts.allocation_id}: {kind} receipt does not match the allocation "
            f"({', '.join(wrong) or 'kind'})"
        )
    fields = {"kind", *expected, *_OWN_FIELDS[kind]}
    if missing := fields - claims.keys():
        raise _refused(where, f"{', '.join(sorted(missing))} missing")
    if unknown := claims.keys() - fields:
        names = ", ".join(_shown(name) for name in sorted(unknown)[:3])
        raise _refused(where, f"{len(unknown)} unknown field(s): {names}")
    claims["key_id"] = signature.keyid
    return claims


def _usage(claims: dict[str, Any], facts: AllocationFacts, where: str) -> Usage:
    started = _instant(claims, "started_at", where)
    ended = _instant(claims, "ended_at", where)
    if ended < started:
        raise _refused(where, "ended_at is before started_at")
    if ended - started > _MAX_DURATION:
        raise _refused(where, f"ended_at is more than {MAX_RECEIPT_DURATION_S} s after started_at")
    expected = gpu_seconds(facts.gpus, started, ended)
    claimed = claims["gpu_seconds"]
    if isinstance(claimed, bool) or not isinstance(claimed, int | float):
        raise _refused(where, f"gpu_seconds must be a number (got {_shown(claimed)})")
    if claimed != expected:  # NaN and infinities never equal a recomputation
        raise _refused(
            where, f"gpu_seconds {_shown(claimed)} does not match its times ({expected} expected)"
        )
    exit_code = claims["exit_code"]
    if exit_code is not None and (
        type(exit_code) is not int or not EXIT_CODE_MIN <= exit_code <= EXIT_CODE_MAX
    ):
        raise _refused(
            where,
            f"exit_code must be an integer from {EXIT_CODE_MIN} to {EXIT_CODE_MAX} or null "
            f"(got {_shown(exit_code)})",
        )
    return Usage(claims["key_id"], started, ended, expected, exit_code)


def _instant(claims: dict[str, Any], field: str, where: str) -> datetime:
    """A timezone-aware ISO 8601 time within the supported years, in UTC."""
    value = claims[field]
    try:
        instant = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        instant = None
    if instant is None or instant.utcoffset() is None:
        raise _refused(
            where,
            f"{field} must be an ISO 8601 time with a timezone, e.g. 2025-01-31T12:00:00+00:00 "
            f"(got {_shown(value)})",
        )
    # Compared before converting: astimezone overflows near year 1 and year 9999.
    if not EARLIEST_RECEIPT_TIME <= instant < LATEST_RECEIPT_TIME:
        raise _refused(
            where,
            f"{field} {_shown(value)} is outside the years "
            f"{EARLIEST_RECEIPT_TIME.year} to {LATEST_RECEIPT_TIME.year - 1}",
        )
    return instant.astimezone(UTC)


def _refused(where: str, problem: str) -> ReceiptError:
    """One line however the stranger's text reads (a key id can hold a newline), and short."""
    text = " ".join(f"{where}: {problem}".split())
    return ReceiptError(
        text if len(text) <= MAX_MESSAGE_CHARS else text[: MAX_MESSAGE_CHARS - 1] + "…"
    )


def _shown(value: object) -> str:
    """A stranger's JSON value, short and safe to print (unlike repr of a huge int or deep list)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value) if abs(value) < 10**18 else "a huge integer"
    if isinstance(value, str):
        return repr(value[:SHOWN_TEXT_CHARS]) + ("…" if len(value) > SHOWN_TEXT_CHARS else "")
    return "a JSON array" if isinstance(value, list) else "a JSON object"
