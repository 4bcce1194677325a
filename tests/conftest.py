"""Shared fixtures: a fresh DEPIN_HOME per test, real SQLite and PostgreSQL, one Ray per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from depin.client import Client
from depin.config import ENV_DATABASE_URL, ENV_HOME, ENV_RAY_ADDRESS, Settings
from tests.factories import World, build_world

POSTGRES_ENV = "DEPIN_TEST_POSTGRES_URL"
# The session's Ray instance advertises depin nodes 1..RAY_NODE_SLOTS; each test's fresh
# database numbers its nodes from 1, so every test can run on the one instance.
RAY_NODE_SLOTS = 64
RAY_NODE_GPUS = 64


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads the developer's own DEPIN_HOME or database."""
    home = tmp_path / "depin-home"
    monkeypatch.setenv(ENV_HOME, str(home))
    monkeypatch.delenv(ENV_DATABASE_URL, raising=False)
    monkeypatch.delenv(ENV_RAY_ADDRESS, raising=False)
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
