"""The served OpenAPI is the contract: schemathesis fuzzes every operation of a live server.

``depin.api``'s app runs under a real uvicorn on a loopback port over a fresh
SQLite market (a provider with a node, a developer with money and a job).
schemathesis loads the server's own ``/openapi.json`` and sends what it
generates from it, valid and invalid, signed (RFC 9421) with the developer's
registered key, and runs every built-in check on each answer: no 5xx, every
status and content type declared, every body matching its schema, invalid
input refused, valid input accepted.

Valid-by-the-schema input that the market still refuses for reasons no JSON
schema states (a GPU model not in the catalog, a DSSE envelope whose
signature does not verify, a JobSpec given as a free-form object) may be
answered 422 by the operations that take it; nowhere else.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, BaseSchema, Case, CheckContext, GenerationMode, Response
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup

from depin import keys as keystore
from depin.api.app import create_app
from depin.api.auth import RateLimiter
from depin.api.signing import Ed25519Auth
from depin.client import Client
from depin.config import Settings
from depin.errors import InputError
from tests.factories import job, node

# Requests per operation and mode (valid, invalid): half a minute in all; more to look harder.
MAX_EXAMPLES = int(os.environ.get("DEPIN_FUZZ_EXAMPLES", "15"))
REQUEST_TIMEOUT_S = 10
START_TIMEOUT_S = 10

# Operations whose bodies carry meaning the schema cannot state: 422 is a valid answer there.
SEMANTIC_BODIES = [
    "/v1/nodes",  # its GPU model must be one in the catalog
    "/v1/nodes/batch",
    "/v1/offers/search",  # its request is a JobSpec, given as an object
    "/v1/jobs",  # a DSSE envelope whose signature verifies
    "/v1/jobs/batch",
]
POSITIVE_STATUSES = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# schemathesis's defaults, and 413: invalid input may also be a body over the limit (1 MiB).
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428"]
NEGATIVE_STATUSES += ["429", "5xx"]


def _config() -> SchemathesisConfig:
    semantic = [
        {
            "include-path": path,
            "include-method": "POST",
            "checks": {
                "positive_data_acceptance": {"expected-statuses": [*POSITIVE_STATUSES, "422"]}
            },
        }
        for path in SEMANTIC_BODIES
    ]
    return SchemathesisConfig.from_dict(
        {
            "request-timeout": REQUEST_TIMEOUT_S,
            "generation": {"max-examples": MAX_EXAMPLES, "database": "none"},
            "checks": {
                "enabled": True,
                "negative_data_rejection": {"expected-statuses": NEGATIVE_STATUSES},
            },
            "operations": semantic,
        }
    )


class SignedRequest(requests.auth.AuthBase):
    """Signs the request as prepared, the exact URL and body bytes sent, as the SDK would."""

    def __init__(self, private: Ed25519PrivateKey, market_id: str) -> None:
        self.auth = Ed25519Auth(private, market_id)

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode()
        assert prepared.method is not None and prepared.url is not None
        signed = httpx.Request(prepared.method, prepared.url, content=body)
        self.auth.sign(signed)
        for name in ("Signature", "Signature-Input", "Content-Digest"):
            prepared.headers[name] = signed.headers[name]
        return prepared


class LiveServer:
    """The app under uvicorn in a thread, on a socket bound here (no race for the port)."""

    def __init__(self, client: Client) -> None:
        # The fuzzer sends far more than 100 requests a second from one key and address.
        app = create_app(client.market, limiter=RateLimiter(rate_per_s=1e6, burst=10**6))  # type: ignore[arg-type]
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(START_TIMEOUT_S)
        self.sock.close()


@pytest.fixture
def market_client(home: Path) -> Iterator[Client]:
    """A fresh SQLite market with something in it: a node, a developer with money, a job."""
    client = Client(settings=Settings.from_env(home=home))
    client.init()
    client.new_key("acme")
    client.register_provider("acme", key="acme")
    client.add_node(node(name="berlin-4090"))
    client.new_key("dev")
    client.create_account("dev", key="dev")
    client.deposit("dev", "50")
    client.submit(job(), account="dev")
    yield client
    client.close()


@pytest.fixture
def api_schema(market_client: Client) -> Iterator[BaseSchema]:
    """The live server's own OpenAPI, loaded by schemathesis, every request signed."""
    with LiveServer(market_client) as live:
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json", config=_config())
        private = keystore.load_private("dev", market_client.settings.keys_dir)
        schema.auth.set_from_requests(SignedRequest(private, market_client.market_id))
        yield schema


SELF_SIGNED = "POST /v1/accounts"  # signed by the key it registers, which the fuzzer cannot hold


def signature_accepted(ctx: CheckContext, response: Response, case: Case) -> None:
    """Every request is signed with a registered key, so none is refused as unsigned (401)."""
    if response.status_code == 401 and case.operation.label != SELF_SIGNED:
        raise AssertionError(f"a correctly signed request was refused: {response.text}")


def _fuzz(operation: APIOperation, mode: GenerationMode) -> str | None:
    """Send ``MAX_EXAMPLES`` generated requests to one operation; what failed, if anything."""

    @given(operation.as_strategy(mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure here is reproducible
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate, Phase.shrink],
    )
    def run(case: Case) -> None:
        case.call_and_validate(additional_checks=[signature_accepted])

    try:
        run()
    except Unsatisfiable:  # nothing in its request can be invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, f"{operation.label}: no valid request"
    except FailureGroup as exc:  # each check that failed, with a curl to replay it
        return f"{operation.label} ({mode}): {exc}"
    return None


def test_every_operation_answers_as_its_served_openapi_says(api_schema: BaseSchema) -> None:
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 20, "the OpenAPI lost its operations"
    failures = [
        failure
        for operation in operations
        for mode in GenerationMode
        if (failure := _fuzz(operation, mode)) is not None
    ]
    assert not failures, "\n\n".join(failures)


def test_a_signed_request_to_a_percent_encoded_path_is_verified_as_sent(
    market_client: Client,
) -> None:
    # The signature covers the URI as sent; the server once rebuilt it with the path decoded.
    private = keystore.load_private("dev", market_client.settings.keys_dir)
    with LiveServer(market_client) as live, httpx.Client(base_url=live.url) as http:
        auth = Ed25519Auth(private, market_client.market_id)
        response = http.get("/v1/accounts/caf%C3%A9%20bar", auth=auth)
    assert response.status_code == 403, response.text  # read, then refused: not the caller's
    assert "café bar" in response.json()["detail"]


def test_a_pattern_the_openapi_states_is_checked_by_the_market_with_its_own_message(
    market_client: Client, tmp_path: Path
) -> None:
    # The wire models state the name and key patterns without checking them: a client that
    # builds the body gets the market's InputError, not pydantic's ValidationError.
    with LiveServer(market_client) as live, Client(url=live.url, home=tmp_path / "c") as remote:
        remote.new_key("k")
        with pytest.raises(InputError, match="bad account name 'Bad Name'"):
            remote.create_account("Bad Name", key="k")
