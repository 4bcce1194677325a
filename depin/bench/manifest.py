"""``depin bench manifest``: envelopes verified per second against raw Ed25519, same process.

The full path is what submission does with an envelope before admitting its
job: parse the envelope as it arrives (JSON, base64), check the payload type,
find the key by its id, DSSE's pre-authentication encoding, the signature,
every claim (issuer, audience, nonce, validity window), the key's state,
validate the job as a ``JobSpec``, and spend the nonces against the database
in one transaction per chunk of 1000 envelopes: a lookup refuses any seen
before and an insert remembers the rest (the primary key refuses a racing
replay). It leaves out admission against the fleet, the escrow hold and the
job rows: ``depin bench api`` measures a whole submission. The baseline is
Ed25519 verification alone over the same, prebuilt messages.

The nonce table holds a day of traffic before the clock starts: at an
average of 10 submissions/s, 864,000 nonces, each kept until its envelope
(signed with the longest TTL, a day) expires. A day at issue 11's target of
1,000 submissions/s would be 86.4 M rows, beyond a bench's set-up; a B-tree
100x larger is about one level deeper per lookup.

Both sides are timed the same way: envelope by envelope in one loop, raw then
full (a noisy neighbour slows both alike), each envelope once a round; the
nonces' transaction once a chunk, on the full side. Every round signs fresh
envelopes (a nonce is spent once), and each side's figure is its median round.
"""

from __future__ import annotations

import secrets
import statistics
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.orm import Session

from depin import manifest, nonces
from depin.bench.scratch import scratch_database, temporary_home
from depin.bench.workload import synthetic_jobs
from depin.config import Settings
from depin.db.engine import read_session, run_transaction
from depin.errors import ReplayError
from depin.gcpause import gc_paused
from depin.keys import key_id as compute_key_id
from depin.manifest import CLOCK_SKEW_S, MAX_TTL_S, Claims, Envelope
from depin.market import Marketplace
from depin.spec import JobSpec
from depin.submission import KeyRecord, Verifier, load_keys

ROUNDS = 3
CHUNK = 1000
DAY_S = 86_400
PREFILL_SUBMISSIONS_PER_S = 10
DAY_OF_NONCES = PREFILL_SUBMISSIONS_PER_S * DAY_S  # 864,000
TTL_S = 3600  # the bench's own envelopes

# A day of nonces in one statement: random 128-bit values, expiries spread over the next day.
_PREFILL_SQLITE = (
    "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < :count) "
    "INSERT INTO nonces (nonce, account_id, expires_at) "
    "SELECT lower(hex(randomblob(16))), :account_id, "
    "strftime('%Y-%m-%d %H:%M:%S', :start + i * :step, 'unixepoch') || '.000000' FROM n"
)
_PREFILL_POSTGRES = (
    "INSERT INTO nonces (nonce, account_id, expires_at) "
    "SELECT md5(:salt || i::text), :account_id, "
    "to_timestamp(CAST(:start AS double precision) + i * CAST(:step AS double precision)) "
    "FROM generate_series(0, :count - 1) AS i"
)


def run(
    *, envelopes: int = 5000, prefilled: int = DAY_OF_NONCES, database_url: str | None = None
) -> dict[str, Any]:
    with scratch_database(database_url) as db, temporary_home() as home:
        market = Marketplace(Settings.from_env(home=home, database_url=db.url))
        try:
            key = Ed25519PrivateKey.generate()
            account = f"bench-dev-{uuid.uuid4().hex[:8]}"  # a SQLite --db may hold earlier runs
            market.create_account(account, key.public_key())
            key_id = compute_key_id(key.public_key())
            with read_session(market.sessions) as s:
                keys = load_keys(s, [key_id])
            t = time.perf_counter()
            prefill_nonces(market, keys[key_id].account_id, prefilled)
            prefill_s = time.perf_counter() - t
            specs = synthetic_jobs(envelopes, seed=7)
            rounds = [_round(market, key, account, keys, specs) for _ in range(ROUNDS)]
            in_table = _count_nonces(market)
        finally:
            market.close()
    raw_s = statistics.median(r["raw_s"] for r in rounds)
    full_s = statistics.median(r["full_s"] for r in rounds)
    nonce_s = statistics.median(r["nonce_s"] for r in rounds)
    return {
        "envelopes": envelopes,
        "rounds": ROUNDS,
        "database": db.description,
        "nonces_prefilled": prefilled,
        "prefill_basis": (
            f"a day at {PREFILL_SUBMISSIONS_PER_S} submissions/s"
            if prefilled == DAY_OF_NONCES
            else "--prefilled-nonces"
        ),
        "prefill_s": round(prefill_s, 2),
        "nonces_in_table": in_table,
        "raw_ed25519_per_s": round(envelopes / raw_s),
        "envelopes_per_s": round(envelopes / full_s),
        "ratio": round(raw_s / full_s, 3),
        "full_us_per_envelope": round(full_s / envelopes * 1e6, 1),
        "nonce_us_per_envelope": round(nonce_s / envelopes * 1e6, 1),
        "raw_us_per_envelope": round(raw_s / envelopes * 1e6, 1),
        "payload_bytes_mean": round(sum(r["payload_bytes"] for r in rounds) / len(rounds)),
    }


def verify_one(verifier: Verifier, wire: bytes) -> tuple[KeyRecord, Claims]:
    """An envelope as it arrives, up to its nonce: parsed, verified, its job validated."""
    key, claims = verifier.verify(Envelope.from_json(wire))
    claims.job  # noqa: B018  (validated on first use: here is the use)
    return key, claims


def spend_nonces(market: Marketplace, verified: Sequence[tuple[KeyRecord, Claims]]) -> None:
    """Refuse the chunk if any nonce was seen before, else remember each until its envelope
    expires (plus skew), in one transaction, as submission does."""
    skew = timedelta(seconds=CLOCK_SKEW_S)
    rows = [nonces.SeenNonce(c.nonce, k.account_id, c.expires_at + skew) for k, c in verified]

    def work(s: Session) -> None:
        used = nonces.seen(s, [r.nonce for r in rows])
        if used:
            raise ReplayError(f"envelope nonce {min(used)} was already used")
        if not nonces.record(s, rows):
            raise ReplayError("an envelope's nonce was used concurrently")

    run_transaction(market.sessions, work)


def prefill_nonces(market: Marketplace, account_id: int, count: int) -> None:
    """``count`` nonces as a day of traffic leaves them (not timed): each signed with the
    longest TTL, so the last day's are all still kept, expiring over the next day."""
    if count == 0:
        return
    start = datetime.now(UTC).timestamp() + CLOCK_SKEW_S
    params = {"count": count, "account_id": account_id, "start": start, "step": MAX_TTL_S / count}

    def work(s: Session) -> None:
        postgres = s.get_bind().dialect.name == "postgresql"
        sql = _PREFILL_POSTGRES if postgres else _PREFILL_SQLITE
        s.execute(text(sql), params | {"salt": secrets.token_hex(8)})
        s.execute(text("ANALYZE nonces"))  # a table that held rows for a day has statistics

    run_transaction(market.sessions, work)


def _round(
    market: Marketplace,
    key: Ed25519PrivateKey,
    account: str,
    keys: dict[str, KeyRecord],
    specs: Sequence[JobSpec],
) -> dict[str, float]:
    """One round over freshly signed envelopes: each side's total time."""
    signed = _sign(market, key, account, specs)
    wire = [orjson.dumps(e.to_dict()) for e in signed]  # as a client sends them
    messages = [(e.signatures[0].sig, manifest.pae(e.payload_type, e.payload)) for e in signed]
    public = key.public_key()
    verifier = Verifier(keys, audience=market.market_id, now=datetime.now(UTC))
    clock = time.perf_counter
    raw_s = envelope_s = nonce_s = 0.0
    with gc_paused():
        for start in range(0, len(signed), CHUNK):
            verified = []
            for i in range(start, min(start + CHUNK, len(signed))):
                sig, message = messages[i]
                t0 = clock()
                public.verify(sig, message)
                t1 = clock()
                verified.append(verify_one(verifier, wire[i]))
                t2 = clock()
                raw_s += t1 - t0
                envelope_s += t2 - t1
            t = clock()
            spend_nonces(market, verified)
            nonce_s += clock() - t
    payload_bytes = sum(len(e.payload) for e in signed) / len(signed)
    return {
        "raw_s": raw_s,
        "full_s": envelope_s + nonce_s,
        "nonce_s": nonce_s,
        "payload_bytes": payload_bytes,
    }


def _sign(
    market: Marketplace, key: Ed25519PrivateKey, account: str, specs: Sequence[JobSpec]
) -> list[Envelope]:
    audience = market.market_id
    return [manifest.sign(s, key, issuer=account, audience=audience, ttl_s=TTL_S) for s in specs]


def _count_nonces(market: Marketplace) -> int:
    with market.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM nonces")).scalar_one())
