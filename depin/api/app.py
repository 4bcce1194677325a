"""``depin serve``: the market over HTTP (FastAPI), one route per market operation.

    create_app(market)   the ASGI app: routes (``depin.api.routes``), problem+json for every
                         error, a body limit, and (optionally) the scheduler loop as a
                         lifespan task that stops cleanly with the server

The market is the same ``Marketplace`` the CLI opens locally; the app adds who
may ask (``depin.api.auth``) and the wire format (``depin.api.wire``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from depin import __version__
from depin.api import agent_routes, problems, routes, wire
from depin.api.auth import Authenticator, RateLimiter
from depin.api.batching import SubmissionBatcher
from depin.api.wire import MAX_BODY_BYTES
from depin.errors import DepinError, InputError, NotFoundError, RequestTooLargeError
from depin.limits import LOOP_BACKOFF_MAX_S
from depin.market import Marketplace
from depin.wakeups import JOBS

log = logging.getLogger("depin.api")
REQUEST_THREADS = 200  # requests handled (or waiting on a commit) at once
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]


def problem_response(
    exc: DepinError, request: Request | None = None, *, status: int | None = None
) -> JSONResponse:
    """``exc`` as application/problem+json (``status`` where HTTP itself chose one)."""
    body = problems.problem(exc, instance=None if request is None else request.url.path)
    if status is not None:
        body["status"] = status
    headers = {}
    if body["status"] == 429:
        headers["Retry-After"] = str(max(1, round(body.get("retry_after_s", 1))))
    return JSONResponse(
        body, status_code=body["status"], media_type=problems.PROBLEM_JSON, headers=headers
    )


class BodyLimit:
    """Refuse a request body larger than ``limit`` bytes (413) before reading it whole.

    A body sent without a Content-Length (chunked) is read here, up to the limit, before
    the app sees it: an error raised from inside the app's read would reach FastAPI's body
    parsing, which turns any such error into a 400.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = RequestTooLargeError(f"the request body is larger than {self.limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await problem_response(too_large)(scope, receive, send)
                return
        body = bytearray()
        while True:
            first = await receive()
            if first["type"] != "http.request":
                break  # the client went away: the app hears it
            body += first.get("body", b"")
            if len(body) > self.limit:
                await problem_response(too_large)(scope, receive, send)
                return
            if not first.get("more_body", False):
                first = {"type": "http.request", "body": bytes(body), "more_body": False}
                break
        pending: list[Message] = [first]

        async def replay() -> Message:
            return pending.pop() if pending else await receive()

        await self.app(scope, replay, send)


class SchedulerTask:
    """The scheduler loop in a thread of the server: started and stopped with the app.

    With ``launch`` off it only reserves capacity and money; the allocations wait for a
    launcher (``depin scheduler run --no-launch``), and this process never starts Ray.
    """

    def __init__(
        self, market: Marketplace, *, launch: bool = True, local_ray: bool = False
    ) -> None:
        self.market = market
        self.launch = launch
        self.local_ray = local_ray
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="depin-scheduler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Run the loop until the app stops; a failed cycle (the database away, Ray down) is
        logged and the loop starts again after a backoff, so the server never goes on
        serving with a dead scheduler."""
        backoff_s = 1.0
        while not self._stop.is_set():
            try:
                self._drive()
                return
            except Exception:
                log.exception("the scheduler loop failed; starting it again in %.0f s", backoff_s)
            self._stop.wait(backoff_s)
            backoff_s = min(LOOP_BACKOFF_MAX_S, 2 * backoff_s)

    def _drive(self) -> None:
        from depin.runtime.loop import Driver

        driver = Driver(
            self.market,
            ray_address=self.market.settings.ray_address,
            launch=self.launch,
            idle=self.market.wakeups.sleeper(JOBS),  # a submission starts the next cycle
            local_ray=self.local_ray,
        )
        try:
            driver.run(until=self._stop.is_set)
        finally:
            driver.stop()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)


def create_app(
    market: Marketplace,
    *,
    scheduler: bool = False,
    launch: bool = True,
    local_ray: bool = False,
    limiter: RateLimiter | None = None,
    address_limiter: RateLimiter | None = None,
) -> FastAPI:
    """The market's HTTP API; with ``scheduler`` the app also runs the scheduler loop (which
    launches on Ray unless ``launch`` is off). Strangers' jobs never run on this machine:
    only with ``local_ray`` (one operator's own demo) does a node without an agent get its
    work from a Ray instance here."""
    task = SchedulerTask(market, launch=launch, local_ray=local_ray) if scheduler else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Requests wait on the group commit in threads: let more wait than anyio's 40.
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        if task is not None:
            task.start()
        try:
            yield
        finally:
            market.wakeups.close()  # held long-polls answer now: the server is going
            if task is not None:
                task.stop()
            app.state.intake.close()  # after the loop: nothing submits any more

    app = FastAPI(
        title="depin",
        version=__version__,
        description="An open marketplace for edge GPUs: signed jobs, placement by cost, "
        "locality and latency, and a ledger that holds the money.",
        lifespan=lifespan,
        responses=routes.errors((500, 503)),  # any route: a bug, or the database is away
    )
    world_id = market.account("@world").id
    app.state.market = market
    app.state.intake = SubmissionBatcher(market)
    app.state.auth = Authenticator(
        market.signer, world_id, market.market_id, limiter, address_limiter
    )
    app.state.node_owners = {}  # node id -> its provider, read once (``agent_routes``)
    app.include_router(routes.router)
    app.include_router(agent_routes.router)
    _handle_errors(app)
    app.add_middleware(BodyLimit)  # type: ignore[arg-type]
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's OpenAPI document, with the problem document that every error response names."""
    if app.openapi_schema is None:
        schema = FastAPI.openapi(app)  # builds and caches it in app.openapi_schema
        found = schema.setdefault("components", {}).setdefault("schemas", {})
        found["Problem"] = wire.Problem.model_json_schema(ref_template=_REF_TEMPLATE)
    return app.openapi_schema  # type: ignore[return-value]


_REF_TEMPLATE = wire.PROBLEM_REF.rsplit("/", 1)[0] + "/{model}"


def _handle_errors(app: FastAPI) -> None:
    """Every error leaves as application/problem+json; bad input is never a 500."""

    @app.exception_handler(DepinError)
    async def depin_error(request: Request, exc: DepinError) -> JSONResponse:
        return problem_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        # Not JSON at all is malformed (400); JSON that breaks the schema is invalid (422).
        malformed = [e for e in errors if e.get("type") == "json_invalid"]
        error = InputError(_json_line(malformed[0]) if malformed else _validation_line(errors))
        return problem_response(error, request, status=400 if malformed else None)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        cls = NotFoundError if exc.status_code == 404 else InputError
        response = problem_response(cls(str(exc.detail)), request, status=exc.status_code)
        response.headers.update(exc.headers or {})  # 405's Allow, for one
        return response

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return problem_response(DepinError("internal error: the market's log has the details"))


def _json_line(error: Any) -> str:
    """A body that is not JSON: what the decoder said, and where."""
    where = error.get("loc", ())[-1:]
    reason = (error.get("ctx") or {}).get("error", "not valid JSON")
    at = f" at character {where[0]}" if where and isinstance(where[0], int) else ""
    return f"the request body is not JSON: {reason}{at}"


def _validation_line(errors: Any) -> str:
    """Pydantic's errors as one line: the first field and what is wrong with it."""
    if not errors:
        return "the request is not valid"
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where or 'request'}: {first.get('msg', 'invalid')}{more}"
