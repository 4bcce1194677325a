"""``depin bench manifest``: envelopes verified per second against raw Ed25519, same process.

The full path is what submission runs before admitting a job: the payload
type, the key (found by its id), DSSE's pre-authentication encoding, the
signature, every claim (issuer, audience, nonce, validity window), the key's
state, and the nonces against the database (one query per chunk). The
baseline is Ed25519 verification alone over the same, prebuilt messages.
Noise on a shared machine only ever adds time, so each envelope keeps its
fastest time on either side over a few rounds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from depin import manifest
from depin.bench.workload import synthetic_jobs
from depin.config import Settings
from depin.gcpause import gc_paused
from depin.market import Marketplace
from depin.nonces import seen as seen_nonces
from depin.submission import Verifier, load_keys

ROUNDS = 5
CHUNK = 1000


def run(*, envelopes: int = 5000, database_url: str | None = None) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="depin-bench-"))
    market = Marketplace(Settings.from_env(home=home, database_url=database_url))
    try:
        key = Ed25519PrivateKey.generate()
        account = f"bench-dev-{uuid.uuid4().hex[:8]}"  # a --db may hold earlier runs
        market.create_account(account, key.public_key())
        specs = synthetic_jobs(envelopes, seed=7)
        signed = [
            manifest.sign(s, key, issuer=account, audience=market.market_id, ttl_s=3600)
            for s in specs
        ]
        public = key.public_key()
        messages = [(e.signatures[0].sig, manifest.pae(e.payload_type, e.payload)) for e in signed]
        keys = market._read(lambda s: load_keys(s, [manifest.key_id_of(signed[0])]))
        # Envelope by envelope, raw then full, each timed on its own: the two sides of a pair
        # run a fraction of a millisecond apart, so a noisy neighbour slows both alike; over
        # rounds each envelope keeps its fastest time on either side.
        best_raw = [float("inf")] * envelopes
        best_full = [float("inf")] * envelopes
        nonce_s = float("inf")
        clock = time.perf_counter
        for _ in range(ROUNDS):
            verifier = Verifier(keys, audience=market.market_id, now=datetime.now(UTC))
            nonces = []
            with gc_paused():
                for i, (envelope, (sig, message)) in enumerate(zip(signed, messages, strict=True)):
                    t0 = clock()
                    public.verify(sig, message)
                    t1 = clock()
                    nonces.append(verifier.verify(envelope)[1].nonce)
                    t2 = clock()
                    best_raw[i] = min(best_raw[i], t1 - t0)
                    best_full[i] = min(best_full[i], t2 - t1)
            t = clock()
            for start in range(0, envelopes, CHUNK):
                assert not market._read(
                    lambda s, n=nonces[start : start + CHUNK]: seen_nonces(s, n)
                )
            nonce_s = min(nonce_s, clock() - t)
        raw = envelopes / sum(best_raw)
        full = envelopes / (sum(best_full) + nonce_s)
        ratio = full / raw
        return {
            "envelopes": envelopes,
            "database": market.engine.dialect.name,
            "raw_ed25519_per_s": round(raw),
            "envelopes_per_s": round(full),
            "ratio": round(ratio, 3),
            "payload_bytes_mean": round(sum(len(e.payload) for e in signed) / len(signed)),
        }
    finally:
        market.close()
        shutil.rmtree(home, ignore_errors=True)
