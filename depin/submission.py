"""Submission: verify signed manifests, admit them, and queue them with their escrow holds.

Verification happens before anything in a payload is parsed. A batch is all
or nothing: one bad envelope refuses the batch, naming it, and writes nothing.
Admission asks the scheduler whether any registered node could ever take the
job (busy nodes count; they free up), so a job that can never run is refused
at the door instead of waiting forever.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from depin import nonces
from depin.db.engine import reserve_ids
from depin.db.models import Account, AccountKey, Job, JobManifest, utcnow
from depin.errors import (
    DepinError,
    InsufficientFundsError,
    ReplayError,
    RevokedKeyError,
    UnknownKeyError,
    UnschedulableError,
)
from depin.gcpause import gc_paused
from depin.keys import public_key_from_b64
from depin.ledger import ESCROW_ACCOUNT, Balance, Entry, Ledger
from depin.limits import PENDING_HOLD_TIMEOUT_S
from depin.manifest import (
    CLOCK_SKEW_S,
    PAYLOAD_TYPE,
    Claims,
    Envelope,
    canonical_json,
    check_claims,
    pae,
    parse_claims,
    verify_signature,
)
from depin.money import format_usd, usage_cost_micro, usd_to_micro
from depin.spec import JobSpec
from depin.states import JobState
from scheduler import Admission, Snapshot, admit
from scheduler.request import request_key


@dataclass(frozen=True, slots=True)
class Admitted:
    """A verified, admitted envelope, ready to be queued."""

    envelope: Envelope
    claims: Claims
    key_id: str
    account_id: int
    hold_micro: int

    @property
    def spec(self) -> JobSpec:
        return self.claims.job


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A registered key as verification needs it (read before any transaction)."""

    key_id: str
    account_id: int
    account_name: str
    public_key: str
    state: str
    revoked_at: datetime | None
    not_before: datetime | None
    not_after: datetime | None


def max_cost_micro(spec: JobSpec, price_micro_per_gpu_hour: int) -> int:
    """The most one replica can cost at a price: price x gpus x max duration, within the budget."""
    bound = usage_cost_micro(
        price_micro_per_gpu_hour, spec.resources.gpus, spec.max_duration_s * 1000
    )
    if spec.pricing.budget_usd is not None:
        bound = min(bound, usd_to_micro(spec.pricing.budget_usd) // spec.replicas)
    return bound


def load_keys(s: Session, key_ids: Sequence[str]) -> dict[str, KeyRecord]:
    rows = s.execute(
        select(AccountKey, Account.name)
        .join(Account, Account.id == AccountKey.account_id)
        .where(AccountKey.key_id.in_(sorted(set(key_ids))))
    )
    return {
        k.key_id: KeyRecord(
            k.key_id,
            k.account_id,
            name,
            k.public_key,
            k.state,
            k.revoked_at,
            k.not_before,
            k.not_after,
        )
        for k, name in rows
    }


class Verifier:
    """Checks envelopes against the registered keys: signature, claims, key state.

    The signature is checked over the exact bytes before anything in the
    payload is parsed. Replays are checked against the database separately
    (``seen_nonces``), a batch at a time.
    """

    def __init__(self, keys: dict[str, KeyRecord], *, audience: str, now: datetime) -> None:
        self.keys, self.audience, self.now = keys, audience, now

    def _verify_signature(self, envelope: Envelope) -> KeyRecord:
        """The common case inline (one signature by a known key); anything else the general way."""
        if len(envelope.signatures) == 1 and envelope.payload_type == PAYLOAD_TYPE:
            signature = envelope.signatures[0]
            key = self.keys.get(signature.keyid)
            if key is not None:
                try:
                    public_key_from_b64(key.public_key).verify(
                        signature.sig, pae(PAYLOAD_TYPE, envelope.payload)
                    )
                    return key
                except InvalidSignature:
                    pass  # the general path below says why
        signature, _ = verify_signature(envelope, self._find)
        return self.keys[signature.keyid]

    def _find(self, kid: str) -> list[Ed25519PublicKey]:
        key = self.keys.get(kid)
        return [] if key is None else [public_key_from_b64(key.public_key)]

    def signed_request(self, envelope: Envelope) -> str:
        """What a signed envelope asks for, whatever its nonce and times (see ``request_of``).

        Only the signature is checked: a retry may come after the envelope expired
        or its nonce was recorded by the first attempt.
        """
        key = self._verify_signature(envelope)
        return request_of(parse_claims(envelope, signer_account=key.account_name))

    def verify(self, envelope: Envelope) -> tuple[KeyRecord, Claims]:
        key = self._verify_signature(envelope)
        claims = parse_claims(envelope, signer_account=key.account_name)
        check_claims(claims, audience=self.audience, now=self.now)
        check_key_usable(key, self.now)
        if key.account_name != claims.issuer:
            raise UnknownKeyError(
                f"key {key.key_id} signs for account {key.account_name!r}, not {claims.issuer!r}"
            )
        return key, claims

    def verify_all(self, envelopes: Sequence[Envelope]) -> list[tuple[KeyRecord, Claims]]:
        """Verify a batch; the first bad envelope raises, naming its position."""
        out = []
        with gc_paused():  # thousands of small payload dicts; no cycles among them
            for index, envelope in enumerate(envelopes):
                try:
                    out.append(self.verify(envelope))
                except DepinError as exc:
                    if len(envelopes) > 1:
                        raise type(exc)(f"envelope {index + 1} of {len(envelopes)}: {exc}") from exc
                    raise
        return out


def request_of(claims: Claims) -> str:
    """A submission as an idempotency key remembers it: issuer, audience and job.

    Signing the same manifest again (a retry that re-signs) makes a new nonce and
    new times, so those are left out: the retry is the same request.
    """
    job = {"issuer": claims.issuer, "audience": claims.audience, "job": claims.job.to_json_dict()}
    return hashlib.sha256(canonical_json(job)).hexdigest()


def admit_envelopes(
    envelopes: Sequence[Envelope],
    keys: dict[str, KeyRecord],
    snapshot: Snapshot,
    prices: dict[int, int],
    *,
    audience: str,
    now: datetime,
) -> list[Admitted]:
    """Verify and admit every envelope; the first bad one raises, naming its position."""
    verified = Verifier(keys, audience=audience, now=now).verify_all(envelopes)
    admissions: dict[object, Admission] = {}  # jobs of one request class are admitted once
    out = []
    for index, (envelope, (key, claims)) in enumerate(zip(envelopes, verified, strict=True)):
        try:
            out.append(_admit(envelope, key, claims, snapshot, prices, admissions))
        except DepinError as exc:
            if len(envelopes) > 1:
                raise type(exc)(f"envelope {index + 1} of {len(envelopes)}: {exc}") from exc
            raise
    return out


def _admit(
    envelope: Envelope,
    key: KeyRecord,
    claims: Claims,
    snapshot: Snapshot,
    prices: dict[int, int],
    admissions: dict[object, Admission],
) -> Admitted:
    """Could any node ever run the job, and what is the most it can cost?"""
    spec = claims.job
    rkey = request_key(spec)
    admission = admissions.get(rkey)
    if admission is None:
        admission = admissions[rkey] = admit(spec, snapshot)
    if not admission.ok:
        raise UnschedulableError(
            f"no node can ever run job {spec.name!r}: " + "; ".join(admission.status.reasons),
            admission.status.reasons,
        )
    cap = spec.pricing.max_usd_per_gpu_hour
    # The most it can cost: at the declared price cap, else at the dearest node that fits.
    max_price = (
        usd_to_micro(cap)
        if cap is not None
        else max(prices[n] for n in admission.feasible_node_ids)
    )
    hold = max_cost_micro(spec, max_price) * spec.replicas
    return Admitted(envelope, claims, key.key_id, key.account_id, hold)


def template_json(spec: JobSpec) -> str:
    """The spec without its name, canonical: equal for every job made from one template."""
    data = spec.to_json_dict()
    del data["name"]
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


class UsableKey(Protocol):
    """What deciding whether a key may sign needs (a ``KeyRecord``, an ``accounts.Signer``)."""

    key_id: str
    account_name: str
    state: str
    revoked_at: datetime | None
    not_before: datetime | None
    not_after: datetime | None


def check_key_usable(key: UsableKey, now: datetime) -> None:
    """A revoked key, or one outside its validity window, is good for nothing new.

    A revoked key is refused whatever issued-at its envelope claims: whoever
    holds a stolen key can backdate an envelope to before the revocation.
    """
    skew = timedelta(seconds=CLOCK_SKEW_S)
    if key.state == "revoked":
        when = f" at {key.revoked_at.isoformat()}" if key.revoked_at else ""
        raise RevokedKeyError(
            f"key {key.key_id} was revoked{when}: sign with an active key "
            f"(`depin keys rotate {key.account_name}`)"
        )
    if key.not_after is not None and now > key.not_after + skew:
        raise RevokedKeyError(f"key {key.key_id} expired at {key.not_after.isoformat()}")
    if key.not_before is not None and now < key.not_before - skew:
        raise RevokedKeyError(f"key {key.key_id} is not valid before {key.not_before.isoformat()}")


def queue(
    s: Session, admitted: Sequence[Admitted], *, now: datetime, checked: bool = False
) -> list[int]:
    """Record nonces, holds and jobs for admitted envelopes in the caller's transaction.

    ``checked``: the caller already re-read the keys, checked the balances and recorded
    the nonces under the ledger's lock (``depin.intake`` does, request by request).
    """
    ledger = Ledger(s)
    ledger.lock()
    escrow_id = ledger.account(ESCROW_ACCOUNT).id
    if not checked:
        _recheck_keys(s, admitted, now)
        _check_balances(s, ledger, admitted)
        _record_nonces(s, admitted)
    job_ids = reserve_ids(s, "jobs", len(admitted))
    written = utcnow()
    timeout_at = written + timedelta(seconds=PENDING_HOLD_TIMEOUT_S)
    entries = [
        Entry(
            "hold",
            a.account_id,
            escrow_id,
            a.hold_micro,
            pending=True,
            job_id=job_id,
            memo=f"job {job_id} {a.spec.name}: most it can cost",
            timeout_at=timeout_at,
        )
        for a, job_id in zip(admitted, job_ids, strict=True)
    ]
    hold_ids = ledger.append(entries)
    s.connection().execute(
        Job.__table__.insert(),
        [
            {
                "id": job_id,
                "account_id": a.account_id,
                "key_id": a.key_id,
                "name": a.spec.name,
                "manifest_digest": a.envelope.digest,
                "state": JobState.PENDING,
                "max_cost_micro_usd": a.hold_micro,
                "hold_transfer_id": hold_id,
                "created_at": written,
                "updated_at": written,
            }
            for a, job_id, hold_id in zip(admitted, job_ids, hold_ids, strict=True)
        ],
    )
    s.connection().execute(
        JobManifest.__table__.insert(),
        [
            {
                "job_id": job_id,
                "spec_json": json.dumps(a.spec.to_json_dict(), sort_keys=True),
                "template_json": template_json(a.spec),
                "envelope_json": json.dumps(a.envelope.to_dict(), sort_keys=True),
            }
            for a, job_id in zip(admitted, job_ids, strict=True)
        ],
    )
    return job_ids


def _recheck_keys(s: Session, admitted: Sequence[Admitted], now: datetime) -> None:
    """Keys were read before verification, outside this transaction: one revoked since
    (or gone) must not slip through; under the ledger lock this read is current."""
    current = load_keys(s, [a.key_id for a in admitted])
    for a in admitted:
        key = current.get(a.key_id)
        if key is None:
            raise RevokedKeyError(
                f"key {a.key_id} is no longer registered: sign with an active key"
            )
        check_key_usable(key, now)


def _check_balances(s: Session, ledger: Ledger, admitted: Sequence[Admitted]) -> None:
    """Every account covers all its holds in the batch (the CHECK backs this up)."""
    needed: dict[int, int] = defaultdict(int)
    for a in admitted:
        needed[a.account_id] += a.hold_micro
    for account_id, amount in needed.items():
        balance = ledger.balance(account_id)
        if amount > balance.available:
            raise InsufficientFundsError(short_of(balance, amount, admitted))


def short_of(balance: Balance, amount: int, admitted: Sequence[Admitted]) -> str:
    """Why ``balance`` cannot hold ``amount`` for ``admitted``, and what would fix it."""
    what = f"job {admitted[0].spec.name!r}" if len(admitted) == 1 else f"{len(admitted)} jobs"
    return (
        f"account {balance.account!r} has {format_usd(balance.available)} available, "
        f"{format_usd(amount)} needed to hold the most {what} can cost "
        "(price x gpus x max_duration_s): deposit with "
        f"`depin account deposit {balance.account} USD` or lower max_duration_s or budget_usd"
    )


def _record_nonces(s: Session, admitted: Sequence[Admitted]) -> None:
    """Remember each nonce until its envelope can no longer be valid; a replay is refused."""
    claimed = [a.claims.nonce for a in admitted]
    if len(set(claimed)) != len(claimed):
        raise ReplayError("the batch holds the same envelope twice: sign each manifest once")
    used = nonces.seen(s, claimed)
    if used:
        raise ReplayError(f"envelope nonce {min(used)} was already used: sign the manifest again")
    skew = timedelta(seconds=CLOCK_SKEW_S)
    rows = [
        nonces.SeenNonce(a.claims.nonce, a.account_id, a.claims.expires_at + skew) for a in admitted
    ]
    # The primary key refuses a replay that raced the check above.
    if not nonces.record(s, rows):
        raise ReplayError("an envelope's nonce was used concurrently: sign the manifest again")
