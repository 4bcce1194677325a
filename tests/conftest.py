"""Shared fixtures: a fresh DEPIN_HOME per test, real SQLite and PostgreSQL, one Ray per session."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from depin.client import Client
from depin.config import ENV_API_URL, ENV_DATABASE_URL, ENV_HOME, ENV_RAY_ADDRESS, Settings
from depin.market import Marketplace
from tests.factories import World, build_world

POSTGRES_ENV = "DEPIN_TEST_POSTGRES_URL"
# The session's Ray instance advertises depin nodes 1..RAY_NODE_SLOTS; each test's fresh
# database numbers its nodes from 1, so every test can run on the one instance.
RAY_NODE_SLOTS = 64
RAY_NODE_GPUS = 64


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "local_only(reason): a CLI test that has no remote mode (tests/test_cli.py)"
    )


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the developer's own DEPIN_HOME or database."""
    home = tmp_path / "depin-home"
    monkeypatch.setenv(ENV_HOME, str(home))
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    monkeypatch.delenv(ENV_RAY_ADDRESS, raising=False)
    monkeypatch.delenv(ENV_API_URL, raising=False)
    return home


@pytest.fixture
def home(_isolated_env: Path) -> Path:
    return _isolated_env


def _reset_postgres(url: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(f"PostgreSQL tests need {POSTGRES_ENV} (.ci/run sets it)")
    _reset_postgres(url)
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, home: Path) -> str:
    """Each test using this runs on a SQLite file and, when configured, on PostgreSQL."""
    if request.param == "sqlite":
        home.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{home / 'depin.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def client(database_url: str, home: Path) -> Iterator[Client]:
    c = Client(settings=Settings.from_env(home=home, database_url=database_url))
    yield c
    c.close()


@pytest.fixture
def sqlite_client(home: Path) -> Iterator[Client]:
    c = Client(settings=Settings.from_env(home=home))
    yield c
    c.close()


@pytest.fixture
def world(client: Client) -> World:
    """A small fleet in Berlin, Frankfurt and Tokyo, and a funded developer."""
    return build_world(client)


@pytest.fixture
def sqlite_world(sqlite_client: Client) -> World:
    """The same world on SQLite alone (what tests on the shared Ray instance use)."""
    return build_world(sqlite_client)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray instance for the whole test session (it takes 10-20 s to start)."""
    import logging

    import ray

    from depin.runtime.executor import node_resource

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        resources={node_resource(i): RAY_NODE_GPUS for i in range(1, RAY_NODE_SLOTS + 1)},
        include_dashboard=False,
        logging_level=logging.ERROR,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


SERVER_START_TIMEOUT_S = 10.0


@contextmanager
def uvicorn_in_thread(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free loopback port, in a thread of this process;
    yields its base URL and stops it (``should_exit``) on the way out."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.005)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_START_TIMEOUT_S)
        sock.close()


@pytest.fixture
def live_server(home: Path) -> Iterator[str]:
    """``depin serve`` as the operator runs it on the coordinator: a market over a database of
    its own (DEPIN_HOME/server.db), the operator's key made by ``init`` in DEPIN_HOME/keys,
    served by uvicorn on a loopback port. Yields the API's base URL."""
    from depin.api.app import create_app

    with Client(settings=server_settings(home)) as operator:
        operator.init()  # the market's schema and the operator's key (local key ``operator``)
        assert isinstance(operator.market, Marketplace)
        with uvicorn_in_thread(create_app(operator.market)) as url:
            yield url


def server_settings(home: Path) -> Settings:
    """A served market's settings: DEPIN_HOME's keys, and a database of its own."""
    return Settings(home, f"sqlite:///{home / 'server.db'}", None)


# -- the API in-process: the app through httpx (starlette's TestClient), no network ----------------

API_BASE_URL = "http://testserver"


@pytest.fixture
def served_market(home: Path) -> Iterator[Marketplace]:
    """The market behind an API: its own database, the operator's key made by ``init``."""
    with Client(settings=server_settings(home)) as operator:
        operator.init()
        assert isinstance(operator.market, Marketplace)
        yield operator.market


@pytest.fixture
def api(served_market: Marketplace) -> Iterator[Any]:
    """``depin serve``'s app in this process, as an ``httpx.Client`` (a TestClient)."""
    from starlette.testclient import TestClient

    from depin.api.app import create_app

    with TestClient(create_app(served_market), base_url=API_BASE_URL) as http:
        yield http


@pytest.fixture
def api_client(api: Any, home: Path) -> Client:
    """The SDK over HTTP to ``api``, with DEPIN_HOME's keys (the operator's among them)."""
    from depin.api.remote import HttpMarket

    market = HttpMarket(API_BASE_URL, home / "keys", http=api)
    return Client(settings=server_settings(home), market=market)


@pytest.fixture
def api_world(api_client: Client) -> World:
    """The usual world (acme's four nodes, dev with $100), made through the API."""
    return build_world(api_client)


def signed_request(http: Any, method: str, path: str, key: str, home: Path, **options: Any) -> Any:
    """An ``httpx.Request`` signed (RFC 9421) with the local key ``key``: exact bytes to send,
    resend or tamper with."""
    from depin.api.signing import Ed25519Auth
    from depin.keys import load_private

    request = http.build_request(method, path, **options)
    market_id = http.get("/v1/market").json()["market_id"]
    Ed25519Auth(load_private(key, home / "keys"), market_id).sign(request)
    return request
