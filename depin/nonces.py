"""Seen nonces: one table for envelopes' nonces and signed requests' nonces.

A nonce is kept under a primary key until whatever carried it can no longer
be valid (its expiry plus the clock skew), so a replay is refused even when
two replays race. Request nonces are stored as ``req:<nonce>``, so a request
can never spend the nonce of someone's envelope.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin.db.models import Nonce

REQUEST_PREFIX = "req:"


@dataclass(frozen=True, slots=True)
class SeenNonce:
    """A nonce to remember, whose it is, and until when."""

    nonce: str
    account_id: int
    expires_at: datetime


def request_nonce(nonce: str, account_id: int, expires_at: datetime) -> SeenNonce:
    return SeenNonce(REQUEST_PREFIX + nonce, account_id, expires_at)


def seen(s: Session, nonces: Sequence[str]) -> set[str]:
    """Which of ``nonces`` were used before: one query with the batch as a single parameter."""
    if not nonces:
        return set()
    conn = s.connection()
    if conn.dialect.name == "postgresql":
        rows = conn.exec_driver_sql(
            "SELECT nonce FROM nonces WHERE nonce = ANY(%s)", (list(nonces),)
        )
    else:
        rows = conn.exec_driver_sql(
            "SELECT nonce FROM nonces WHERE nonce IN (SELECT value FROM json_each(?))",
            (json.dumps(list(nonces)),),
        )
    return {r[0] for r in rows}


def record(s: Session, nonces: Sequence[SeenNonce]) -> bool:
    """Remember ``nonces`` in the caller's transaction; False (nothing written) if any was
    seen before, by an earlier transaction or a racing one (the primary key decides)."""
    if not nonces:
        return True
    rows = [
        {"nonce": n.nonce, "account_id": n.account_id, "expires_at": n.expires_at} for n in nonces
    ]
    try:
        with s.begin_nested():
            s.connection().execute(Nonce.__table__.insert(), rows)
    except IntegrityError:
        return False
    return True


def prune(s: Session, now: datetime) -> int:
    """Forget nonces whose carriers expired (plus skew): replaying those is refused anyway."""
    return s.execute(Nonce.__table__.delete().where(Nonce.expires_at < now)).rowcount
