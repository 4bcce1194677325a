"""The HTTP contract between ``depin serve`` and the SDK: paths, headers and models.

One definition of each: the server's routes and the clients' requests both
use these, and responses are the SDK's own read models (``depin.views``, the
ledger's ``Balance`` and ``VerifyReport``, the scheduler's search ``Hit``),
which pydantic validates on either side. A job is submitted as its DSSE
envelope, exactly as signed.
"""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from depin.spec import NAME_PATTERN
from depin.views import KeyView

T = TypeVar("T")

API_PREFIX = "/v1"
IDEMPOTENCY_HEADER = "Idempotency-Key"  # draft-ietf-httpapi-idempotency-key-header
MAX_BODY_BYTES = 1 << 20  # a request body above this is refused (413)
MAX_PAGE = 1000  # items in one page of a list
MAX_LOOKUP_KEYS = 200  # key ids in one lookup
MAX_ID = 2**63 - 1  # an id fits a signed 64-bit integer (SQLite's INTEGER, a bigint)
ID_CURSOR = r"^[0-9]{1,18}$"  # a cursor that is an id: the digits of one, below MAX_ID
# A raw Ed25519 public key (32 bytes) in base64, as keys.public_key_from_b64 reads it.
KEY_B64 = r"^\s*(ed25519 )?\s*[A-Za-z0-9+/]{43}=\s*$"
PROBLEM_REF = "#/components/schemas/Problem"  # the error document's schema in the OpenAPI

# Paths, relative to the API's base URL.
MARKET = f"{API_PREFIX}/market"
SCHEDULER = f"{API_PREFIX}/scheduler"
ACCOUNTS = f"{API_PREFIX}/accounts"
ACCOUNT = f"{API_PREFIX}/accounts/{{name}}"
DEPOSITS = f"{API_PREFIX}/accounts/{{name}}/deposits"
ACCOUNT_KEYS = f"{API_PREFIX}/accounts/{{name}}/keys"
KEYS = f"{API_PREFIX}/keys"
KEY_REVOCATION = f"{API_PREFIX}/keys/{{key_id}}/revocation"
BALANCES = f"{API_PREFIX}/balances"
NODES = f"{API_PREFIX}/nodes"
NODE_BATCH = f"{API_PREFIX}/nodes/batch"
NODE_ALLOCATIONS = f"{API_PREFIX}/nodes/{{node_id}}/allocations"
NODE_HEARTBEAT = f"{API_PREFIX}/nodes/{{node_id}}/heartbeat"
NODE_WORK = f"{API_PREFIX}/nodes/{{node_id}}/work"
ALLOCATION = f"{API_PREFIX}/nodes/{{node_id}}/allocations/{{allocation_id}}"
ALLOCATION_ACCEPTANCE = f"{ALLOCATION}/acceptance"
ALLOCATION_LOG = f"{ALLOCATION}/log"
ALLOCATION_REPORT = f"{ALLOCATION}/report"
OFFERS = f"{API_PREFIX}/offers/search"
JOBS = f"{API_PREFIX}/jobs"
JOB_BATCH = f"{API_PREFIX}/jobs/batch"
JOB = f"{API_PREFIX}/jobs/{{job_id}}"
JOB_EXPLAIN = f"{API_PREFIX}/jobs/{{job_id}}/explain"
JOB_PLACEMENT = f"{API_PREFIX}/jobs/{{job_id}}/placement"
JOB_CANCEL = f"{API_PREFIX}/jobs/{{job_id}}/cancel"
JOB_LOGS = f"{API_PREFIX}/jobs/{{job_id}}/logs"
ENTRIES = f"{API_PREFIX}/ledger/entries"
LEDGER_VERIFY = f"{API_PREFIX}/ledger/verify"
LEDGER_EXPORT = f"{API_PREFIX}/ledger/export"


def _states(pattern: str) -> dict[str, Any]:
    """A pattern the OpenAPI states but the model does not check: the market checks it, with
    a message a person can act on (and a client that builds the body gets that error)."""
    return {"pattern": pattern}


class Body(BaseModel):
    """A request body: unknown fields are errors, as in manifests."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketInfo(Body):
    market_id: str
    version: str
    operator_key_id: str | None = Field(description="The key that signs deposits")
    operator_public_key: str | None


class NewAccount(Body):
    """Open an account; the request must be signed by ``public_key`` itself."""

    name: str = Field(max_length=64, json_schema_extra=_states(NAME_PATTERN))
    kind: Literal["developer", "provider"] = "developer"
    public_key: str = Field(
        max_length=128,
        description="base64 of the raw Ed25519 key",
        json_schema_extra=_states(KEY_B64),
    )


class Deposit(Body):
    micro_usd: int = Field(gt=0, le=10**15)


class NewKey(Body):
    """Register another key for an account; with ``revoke_old`` its other keys go."""

    public_key: str = Field(
        max_length=128,
        description="base64 of the raw Ed25519 key",
        json_schema_extra=_states(KEY_B64),
    )
    not_after: AwareDatetime | None = None  # a time without its zone is ambiguous: refused
    revoke_old: bool = False


class Rotated(Body):
    key: KeyView
    revoked: list[KeyView]


class Search(Body):
    """What ``depin offers`` asks: a JobSpec's worth of constraints, a sort and a limit."""

    request: dict[str, Any]
    sort: Literal["price", "latency", "score"] = "price"
    limit: int = Field(default=20, ge=1, le=MAX_PAGE)


class Placement(Body):
    node_id: int = Field(ge=1, le=MAX_ID)


class Envelopes(Body):
    envelopes: list[dict[str, Any]] = Field(min_length=1, max_length=1000)


class JobIds(Body):
    job_ids: list[int]


class NodeIds(Body):
    node_ids: list[int]


class AllocationIds(Body):
    allocation_ids: list[int]


class Running(Body):
    scheduler_running: bool


class Problem(BaseModel):
    """An error, as RFC 9457 application/problem+json (``depin.api.problems``)."""

    type: str = Field(description="/problems/<slug>: one per DepinError class, stable")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="The one line that says what went wrong and what to do")
    instance: str | None = None
    reasons: list[str] | None = Field(default=None, description="Why a job cannot be placed")
    retry_after_s: float | None = Field(default=None, description="When rate limited")


class Page(BaseModel, Generic[T]):
    """One page of a list; ask again with ``cursor=next_cursor`` until it is null."""

    items: list[T]
    next_cursor: str | None = None


def adapter(kind: Any) -> TypeAdapter[Any]:
    """A (cached) validator for ``kind``: how a client reads a response body."""
    found = _ADAPTERS.get(kind)
    if found is None:
        found = _ADAPTERS[kind] = TypeAdapter(kind)
    return found


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}
