"""Every bound the market keeps, in one place: retries, timeouts, sizes.

After TigerBeetle: put a limit on everything, and say it once.

Retries, from the outside in. A state-changing SDK call is tried at most
``CLIENT_ATTEMPTS`` times on a transient database error (each retry under the
same idempotency key, so it acts once). Each try claims its idempotency key
at most ``IDEMPOTENCY_ATTEMPTS`` times (a twin may hold it). Each claim is one
transaction, which PostgreSQL may abort as a serialization failure or a
deadlock and which is then run again, ``TRANSACTION_ATTEMPTS`` times at most.
So one SDK call on the embedded market runs at most ``MAX_TRANSACTIONS_PER_CALL``
(72) transactions and sleeps at most ``MAX_BACKOFF_PER_CALL_S`` (6.69 s) between
them. Over HTTP the SDK does not retry itself: the transport sends a request that
is safe to repeat (a GET, or a POST with an ``Idempotency-Key``) ``HTTP_ATTEMPTS``
times at most on a connection error or a 502/503/504, each signed anew; on the
server, that request is one transaction with the retries above (less the client's).

Bounds of one component stay beside it where only it reads them (a receipt's
longest run, an envelope's size and signature count, the API's body and page
sizes, rate limits and group sizes).
"""

from __future__ import annotations

# -- retries -------------------------------------------------------------------------------
CLIENT_ATTEMPTS = 3
CLIENT_BACKOFF_S = 0.1  # before retry n: n x this
IDEMPOTENCY_ATTEMPTS = 3  # no sleep: the next attempt reads the twin's result
TRANSACTION_ATTEMPTS = 8
TRANSACTION_BACKOFF_S = 0.005  # before retry n: this x 2**n, at most the cap
TRANSACTION_BACKOFF_CAP_S = 0.2


def transaction_backoff_s(attempt: int) -> float:
    """The sleep after failed transaction attempt ``attempt`` (1-based)."""
    return min(TRANSACTION_BACKOFF_CAP_S, TRANSACTION_BACKOFF_S * 2**attempt)


MAX_TRANSACTIONS_PER_CALL = CLIENT_ATTEMPTS * IDEMPOTENCY_ATTEMPTS * TRANSACTION_ATTEMPTS
MAX_BACKOFF_PER_CALL_S = sum(CLIENT_BACKOFF_S * n for n in range(1, CLIENT_ATTEMPTS)) + (
    CLIENT_ATTEMPTS
    * IDEMPOTENCY_ATTEMPTS
    * sum(transaction_backoff_s(n) for n in range(1, TRANSACTION_ATTEMPTS))
)

HTTP_ATTEMPTS = 4
HTTP_BACKOFF_S = 0.2  # before retry n: this x 2**(n-1)
HTTP_TIMEOUT_S = 30.0  # to read an answer
HTTP_CONNECT_TIMEOUT_S = 5.0

# -- drivers (processes that launch work) --------------------------------------------------
# A driver that has not heartbeated for this long is dead: its reserved and running
# allocations are requeued by the next reconciliation.
DRIVER_TIMEOUT_S = 30
HEARTBEAT_INTERVAL_S = 5.0  # well inside DRIVER_TIMEOUT_S, for as long as a driver lives
RECONCILE_INTERVAL_S = 10.0  # a long-lived scheduler reconciles this often
MAX_UNSETTLED = 10_000  # outcomes a driver keeps to settle again after a database outage
LOOP_BACKOFF_MAX_S = 30.0  # a server's scheduler loop waits at most this after a failed cycle
STOP_POLL_S = 1.0  # a running allocation asks its driver this often whether to stop
ABANDON_WAIT_S = 5.0  # a stopping driver waits this long for its allocations to end

# -- node agents, after Nomad's client TTLs -----------------------------------------------
# An agent heartbeats every interval; a node silent for TTL + grace goes offline and its
# allocations are lost (DEPIN_NODE_TTL_S and DEPIN_NODE_GRACE_S change the two on a
# coordinator). An agent that cannot reach the coordinator for as long stops its jobs
# itself: the market has given them to another node by then.
AGENT_HEARTBEAT_INTERVAL_S = 5.0
NODE_TTL_S = 15.0
NODE_GRACE_S = 10.0
NODE_CHECK_INTERVAL_S = 1.0  # a driver looks for silent nodes this often
# A lost allocation queues its job again at most this many times: the first at once, then
# after REQUEUE_BACKOFF_S x 2**(n-2) before attempt n + 1 (1 s, 2 s).
MAX_REQUEUES = 3
REQUEUE_BACKOFF_S = 1.0
LONG_POLL_MAX_S = 30.0  # the longest an agent's request for work is held open
LONG_POLL_CHECK_S = 0.5  # how often a held request looks again without a wake-up
LOG_BYTES_PER_ALLOCATION = 1 << 20  # streamed output kept per allocation; the rest dropped
LOG_CHUNK_BYTES = 64 << 10  # one report of output at most

# -- money held ----------------------------------------------------------------------------
# Holds time out, as TigerBeetle's pending transfers do, and reconciliation voids them: a
# job's submission hold after a week unscheduled, an allocation's an hour past its limit.
PENDING_HOLD_TIMEOUT_S = 7 * 24 * 3600
ALLOCATION_GRACE_S = 3600

# -- what a provider may bill --------------------------------------------------------------
# A usage receipt is paid only for the part of it that lies within what the market itself
# saw (from the claim to the moment the outcome arrived), widened by this much each side
# for clocks that disagree.
RECEIPT_CLOCK_SKEW_S = 5
# A run its owner cancelled is paid at most until this long after the cancel: time for its
# node to hear it (a driver asks every STOP_POLL_S; an agent's long-poll hears it at once).
CANCEL_STOP_S = 5

# -- sizes ---------------------------------------------------------------------------------
MAX_BATCH_JOBS = 20_000  # jobs one scheduling cycle plans at most
MAX_CLAIM_LAUNCHES = 1000  # allocations one driver claims to launch per cycle
OUTPUT_TAIL_CHARS = 4000  # of a job's output, kept on its allocation
ERROR_CHARS = 500  # an allocation's error line, as the column holds it
