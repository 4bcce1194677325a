"""Who is asking: the signed request's checks, rate limits, and what each caller may do.

A request that changes state or reads private data carries an RFC 9421
signature (``depin.api.signing``) by one of the caller's registered keys.
The server checks the signature, that the key is usable now (not revoked,
within its validity), its freshness, and leaves the nonce to be spent in
the request's own transaction (a read spends it in one of its own). Public
reads need no signature. Every caller, signed or not, draws from a token
bucket: per key when signed, per address when not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from depin.accounts import Signer
from depin.api import signing
from depin.errors import (
    ForbiddenError,
    RateLimitedError,
    RevokedKeyError,
    UnauthenticatedError,
)
from depin.manifest import CLOCK_SKEW_S
from depin.nonces import SeenNonce, request_nonce
from depin.submission import check_key_usable

RATE_PER_S = 100.0  # sustained requests per key
BURST = 200  # requests a quiet caller may send at once
ADDRESS_RATE_PER_S = 1000.0  # sustained unsigned requests per address (many users share a NAT)
MAX_BUCKETS = 100_000  # callers remembered; the quietest are forgotten first
# How long a key's registration is remembered between requests. A revocation through this
# server takes effect at once; one made elsewhere (another server, the CLI) within this.
SIGNER_TTL_S = 2.0
MAX_SIGNERS = 100_000


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified signer of one request."""

    signer: Signer
    nonce: SeenNonce

    @property
    def account(self) -> str:
        return self.signer.account

    @property
    def operator(self) -> bool:
        return self.signer.operator

    def must_be(self, account: str, what: str) -> None:
        """Only ``account`` itself (or the operator) may do ``what``."""
        if not (self.operator or self.account == account):
            raise ForbiddenError(f"{what} belongs to {account!r}; you sign as {self.account!r}")

    def must_own_job(self, owner: str, job_id: int) -> None:
        """Only a job's owner (or the operator) may act on it. The refusal does not name the
        owner: job ids are sequential, and who runs what is nobody else's business."""
        if not (self.operator or self.account == owner):
            raise ForbiddenError(f"job {job_id} is not yours; you sign as {self.account!r}")

    def must_be_operator(self, what: str) -> None:
        if not self.operator:
            raise ForbiddenError(f"only the market operator's key may {what}")


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """A token bucket per caller: ``rate_per_s`` sustained, ``burst`` at once."""

    rate_per_s: float = RATE_PER_S
    burst: int = BURST
    _buckets: dict[str, _Bucket] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, who: str, per: str) -> None:
        """Spend one token of ``who``'s bucket (a ``per``: key, address), or raise
        ``RateLimitedError`` with the wait."""
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(who)
            if bucket is None:
                if len(self._buckets) >= MAX_BUCKETS:
                    self._forget_idle(now)
                bucket = self._buckets[who] = _Bucket(float(self.burst), now)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate_per_s)
            bucket.at = now
            if bucket.tokens < 1:
                wait = (1 - bucket.tokens) / self.rate_per_s
                raise RateLimitedError(
                    f"too many requests: at most {self.rate_per_s:g}/s per {per}; retry in "
                    f"{wait:.2f} s",
                    retry_after_s=wait,
                )
            bucket.tokens -= 1

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled (their callers are quiet)."""
        full = now - self.burst / self.rate_per_s
        for who in [w for w, b in self._buckets.items() if b.at < full]:
            del self._buckets[who]
        if len(self._buckets) >= MAX_BUCKETS:  # everyone is busy: forget the oldest half
            for who in sorted(self._buckets, key=lambda w: self._buckets[w].at)[: MAX_BUCKETS // 2]:
                del self._buckets[who]


class Authenticator:
    """Verifies signed requests against the market's registry of keys."""

    def __init__(
        self,
        find_signer: Callable[[str], Signer | None],
        world_account_id: int,
        market_id: str,
        limiter: RateLimiter | None = None,
        address_limiter: RateLimiter | None = None,
    ) -> None:
        self.find_signer = find_signer
        self.world_account_id = world_account_id  # whose nonces a not yet registered key spends
        self.market_id = market_id  # the market a signature must name (its tag)
        self.limiter = limiter or RateLimiter()
        self.address_limiter = address_limiter or RateLimiter(
            ADDRESS_RATE_PER_S, int(2 * ADDRESS_RATE_PER_S)
        )
        self._signers: dict[str, tuple[float, Signer | None]] = {}

    def forget(self) -> None:
        """Keys changed here (rotated, revoked): read every signer afresh."""
        self._signers.clear()

    def _signer(self, key_id: str) -> Signer | None:
        now = time.monotonic()
        cached = self._signers.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        signer = self.find_signer(key_id)
        if len(self._signers) >= MAX_SIGNERS:
            self._signers.clear()
        self._signers[key_id] = (now + SIGNER_TTL_S, signer)
        return signer

    def caller(
        self,
        method: str,
        url: str,
        headers: Iterable[tuple[str, str]],
        body: bytes,
        *,
        address: str,
        new_key: Ed25519PublicKey | None = None,
    ) -> Caller:
        """The verified caller of a request from ``address``; ``new_key`` stands in for the
        registry when the request registers that key (it proves possession by signing with it).

        Every request draws from its address's bucket before anything is checked, so bad
        signatures and fresh keys (a new account's) cost an attacker as much as good ones;
        a verified request draws from its key's bucket too."""
        self.address_limiter.take(address, "address")
        found: dict[str, Signer] = {}

        def find_key(kid: str) -> Ed25519PublicKey | None:
            if new_key is not None:
                from depin.keys import key_id

                return new_key if key_id(new_key) == kid else None
            signer = self._signer(kid)
            if signer is None:
                return None
            found[kid] = signer
            return signer.public_key

        verified = signing.verify(method, url, list(headers), body, find_key, self.market_id)
        self.limiter.take(verified.key_id, "key")
        signer = found.get(verified.key_id)
        if signer is None:  # a new key: it signs for nobody yet (its nonce is @world's)
            assert new_key is not None
            signer = Signer(
                verified.key_id, new_key, self.world_account_id, "", "", "active", None, None, None
            )
        else:
            try:
                check_key_usable(signer, datetime.now(UTC))
            except RevokedKeyError as exc:  # the same checks as for a manifest's key
                raise UnauthenticatedError(str(exc)) from None
        expires = verified.created + timedelta(seconds=2 * CLOCK_SKEW_S)
        return Caller(signer, request_nonce(verified.nonce, signer.account_id, expires))

    def anonymous(self, address: str) -> None:
        """An unsigned request from ``address`` draws from that address's bucket."""
        self.address_limiter.take(address, "address")
