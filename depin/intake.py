"""Intake: many independent submissions (one per HTTP request) queued in one transaction.

``depin.submission`` queues a batch all or nothing: one bad envelope refuses
the batch. A server receiving a thousand separate requests a second needs the
opposite: each request keeps its own outcome (its job, or its own error), yet
they share one transaction, so the database commits once for all of them and
each check is one statement for the group, not one per request:

    idempotency keys   one read for the group; a retry gets its first answer back
    nonces             the requests' and the envelopes' in one read; a replay fails alone
    keys               re-read under the ledger's lock; a key revoked since fails its own
    balances           each account's holds in arrival order; the one that overdraws fails
    writes             nonces, holds, jobs, manifests and keys in one statement each

A request refused here changes nothing: it is left out of the writes. If a
racing process wins a nonce or a key first (the primary keys decide),
``RaceLost`` makes the caller queue the group one by one instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from depin import nonces
from depin.db.models import IdempotencyKey
from depin.errors import (
    ConflictError,
    DepinError,
    ForbiddenError,
    InsufficientFundsError,
    ReplayError,
    UnauthenticatedError,
)
from depin.idempotency import check_key, request_hash
from depin.ledger import Ledger
from depin.manifest import CLOCK_SKEW_S, Envelope
from depin.nonces import SeenNonce
from depin.submission import (
    Admitted,
    KeyRecord,
    admit_envelopes,
    check_key_usable,
    load_keys,
    queue,
    request_of,
    short_of,
)
from scheduler import Snapshot

OPERATION = "submit"  # as ``Marketplace.submit`` names it, so a retry may take either path


@dataclass(frozen=True, slots=True)
class Submission:
    """One request's envelope, and what its HTTP request carried."""

    envelope: Envelope
    idempotency_key: str | None = None
    nonce: SeenNonce | None = None  # the signed request's own
    issuer: str | None = None  # who signed the request: the envelope must be theirs


Admission = Admitted | DepinError
Outcome = int | DepinError  # the job's id, or why this request was refused


class RaceLost(Exception):
    """Another process took a nonce or an idempotency key first: queue one by one."""


def admit_each(
    subs: Sequence[Submission],
    keys: dict[str, KeyRecord],
    snapshot: Snapshot,
    prices: dict[int, int],
    *,
    audience: str,
    now: datetime,
) -> list[Admission]:
    """Verify and admit each envelope on its own: its admission, or its own error."""
    out: list[Admission] = []
    for sub in subs:
        try:
            admitted = admit_envelopes(
                [sub.envelope], keys, snapshot, prices, audience=audience, now=now
            )[0]
            if sub.issuer is not None and admitted.claims.issuer != sub.issuer:
                raise ForbiddenError(
                    f"you sign as {sub.issuer!r}; the envelope is {admitted.claims.issuer!r}'s"
                )
            out.append(admitted)
        except DepinError as exc:
            out.append(exc)
    return out


def queue_each(
    s: Session, subs: Sequence[Submission], admissions: Sequence[Admission], *, now: datetime
) -> list[Outcome]:
    """Queue every admitted submission that passes its checks, in the caller's transaction."""
    ledger = Ledger(s)
    ledger.lock()
    outcomes: list[Outcome | None] = [a if isinstance(a, DepinError) else None for a in admissions]
    ready = [i for i, o in enumerate(outcomes) if o is None]
    ready, twins = _answer_retries(s, subs, admissions, outcomes, ready)
    ready = _spend_nonces(s, subs, admissions, outcomes, ready)
    ready = _recheck(s, admissions, outcomes, ready, now)
    ready = _within_balances(ledger, admissions, outcomes, ready)
    if ready:
        job_ids = queue(s, [admissions[i] for i in ready], now=now, checked=True)  # type: ignore[misc]
        rows = []
        for i, job_id in zip(ready, job_ids, strict=True):
            outcomes[i] = job_id
            key = subs[i].idempotency_key
            if key is not None:
                rows.append(
                    {
                        "key": key,
                        "operation": OPERATION,
                        "request_hash": _digest(admissions[i]),
                        "response_json": json.dumps([job_id]),
                    }
                )
        if rows and not _insert_keys(s, rows):
            raise RaceLost
    for i, first in twins.items():
        key, queued = subs[i].idempotency_key, outcomes[first]
        if isinstance(queued, int):  # as if the first's key had been stored before
            answer = json.dumps([queued])
            first_was = (OPERATION, _digest(admissions[first]), answer)
            outcomes[i] = _retry_outcome(key, first_was, _digest(admissions[i]))  # type: ignore[arg-type]
        else:  # the first was refused and claimed nothing: this one may try again
            outcomes[i] = ConflictError(f"idempotency key {key!r} is busy: retry the request")
    assert all(o is not None for o in outcomes)
    return outcomes  # type: ignore[return-value]


def _answer_retries(
    s: Session,
    subs: Sequence[Submission],
    admissions: Sequence[Admission],
    outcomes: list[Outcome | None],
    ready: list[int],
) -> tuple[list[int], dict[int, int]]:
    """A key seen before answers with its first job (same request) or refuses (another).

    Returns the submissions left to queue, and the twins: a later submission in
    this group with the same key as an earlier one, to be answered as it is.
    """
    wanted = {subs[i].idempotency_key for i in ready} - {None}
    if not wanted:
        return ready, {}
    for key in wanted:
        check_key(key)  # type: ignore[arg-type]
    done = {
        k.key: (k.operation, k.request_hash, k.response_json)
        for k in s.execute(select(IdempotencyKey).where(IdempotencyKey.key.in_(wanted))).scalars()
    }
    left, twins, first_with = [], {}, {}
    for i in ready:
        key = subs[i].idempotency_key
        if key is None:
            left.append(i)
        elif key in done:
            outcomes[i] = _retry_outcome(key, done[key], _digest(admissions[i]))
        elif key in first_with:  # the same key twice in one group: answered as the first
            twins[i] = first_with[key]
        else:
            first_with[key] = i
            left.append(i)
    return left, twins


def _digest(admission: Admission | DepinError) -> str:
    return request_hash(OPERATION, [request_of(admission.claims)])  # type: ignore[union-attr]


def _retry_outcome(key: str, first: tuple[str, str, str], digest: str) -> Outcome:
    """What a key already answered gives a retry: its job, or a refusal for another request.

    ``first``: the key's operation, request hash and answer (JSON)."""
    operation, first_digest, answer = first
    if operation == OPERATION and first_digest == digest:
        return int(json.loads(answer)[0])
    return ConflictError(
        f"idempotency key {key!r} was already used for a different request "
        f"({operation}); use a new key for a new request"
    )


def _spend_nonces(
    s: Session,
    subs: Sequence[Submission],
    admissions: Sequence[Admission],
    outcomes: list[Outcome | None],
    ready: list[int],
) -> list[int]:
    """Each request's own nonce and its envelope's: a replay (before, or in the group) fails."""
    skew = timedelta(seconds=CLOCK_SKEW_S)
    wanted: dict[int, list[SeenNonce]] = {}
    for i in ready:
        a = admissions[i]
        assert isinstance(a, Admitted)
        own = [] if subs[i].nonce is None else [subs[i].nonce]
        wanted[i] = [*own, SeenNonce(a.claims.nonce, a.account_id, a.claims.expires_at + skew)]  # type: ignore[list-item]
    seen = nonces.seen(s, [n.nonce for group in wanted.values() for n in group])
    left, rows = [], []
    for i in ready:
        spent = [n.nonce for n in wanted[i] if n.nonce in seen]
        if spent:
            request = subs[i].nonce is not None and subs[i].nonce.nonce in spent  # type: ignore[union-attr]
            outcomes[i] = (
                UnauthenticatedError(
                    "this signed request was already used (a replay): sign it again"
                )
                if request
                else ReplayError(
                    f"envelope nonce {spent[-1]} was already used: sign the manifest again"
                )
            )
            continue
        seen.update(n.nonce for n in wanted[i])
        rows += wanted[i]
        left.append(i)
    if rows and not nonces.record(s, rows):
        raise RaceLost
    return left


def _recheck(
    s: Session,
    admissions: Sequence[Admission],
    outcomes: list[Outcome | None],
    ready: list[int],
    now: datetime,
) -> list[int]:
    """Keys were read before verification: one revoked since fails its own submissions."""
    current = load_keys(s, [admissions[i].key_id for i in ready])  # type: ignore[union-attr]
    left = []
    for i in ready:
        key = current.get(admissions[i].key_id)  # type: ignore[union-attr]
        try:
            if key is None:
                raise UnauthenticatedError("the envelope's key is no longer registered")
            check_key_usable(key, now)
        except DepinError as exc:
            outcomes[i] = exc
            continue
        left.append(i)
    return left


def _within_balances(
    ledger: Ledger,
    admissions: Sequence[Admission],
    outcomes: list[Outcome | None],
    ready: list[int],
) -> list[int]:
    """In arrival order, each account's holds while its balance covers them."""
    accounts = {admissions[i].account_id for i in ready}  # type: ignore[union-attr]
    balances = ledger.balances_of(accounts)  # one read for the group
    spent = dict.fromkeys(accounts, 0)
    kept = []
    for i in ready:
        a = admissions[i]
        assert isinstance(a, Admitted)
        balance = balances[a.account_id]
        if spent[a.account_id] + a.hold_micro > balance.available:
            outcomes[i] = InsufficientFundsError(short_of(balance, a.hold_micro, [a]))
            continue
        spent[a.account_id] += a.hold_micro
        kept.append(i)
    return kept


def _insert_keys(s: Session, rows: list[dict[str, str]]) -> bool:
    from sqlalchemy.exc import IntegrityError

    try:
        with s.begin_nested():
            s.connection().execute(IdempotencyKey.__table__.insert(), rows)
    except IntegrityError:
        return False
    return True
