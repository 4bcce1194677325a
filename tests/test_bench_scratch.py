"""A bench's ``--db``: PostgreSQL in a scratch schema dropped afterwards, SQLite appended to
and said so, anything else refused in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from cli import cli
from depin.bench.scratch import SCHEMA_PREFIX, scratch_database, with_search_path
from depin.errors import ConfigError, DatabaseError


def bench(*args: str) -> dict[str, object]:
    result = CliRunner().invoke(cli, ["bench", *args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def enter_and_leave(url: str) -> None:
    with scratch_database(url):
        pass


def tables_and_scratch_schemas(url: str) -> tuple[set[str], set[str]]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            tables = conn.execute(
                text(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            )
            schemas = conn.execute(
                text("SELECT nspname FROM pg_namespace WHERE nspname LIKE :p"),
                {"p": SCHEMA_PREFIX + "%"},
            )
            return {r[0] for r in tables}, {r[0] for r in schemas}
    finally:
        engine.dispose()


def test_without_a_url_a_bench_uses_its_own_fresh_sqlite_file() -> None:
    with scratch_database(None) as db:
        assert db.url is None and db.description == "sqlite, a fresh file"


def test_a_sqlite_url_is_appended_to_and_the_output_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'mine.db'}"
    with scratch_database(url) as db:
        assert db.url == url
        assert db.description.startswith(f"sqlite, appending to {url}")


def test_a_url_of_another_database_is_refused() -> None:
    with pytest.raises(ConfigError, match="unsupported database URL"):
        enter_and_leave("mysql://x")


def test_the_scratch_schema_is_added_to_options_already_in_the_url() -> None:
    url = with_search_path("postgresql+psycopg://u:pw@h/db?options=-cstatement_timeout%3D5s", "s1")
    assert url == (
        "postgresql+psycopg://u:pw@h/db?options=-cstatement_timeout%3D5s+-csearch_path%3Ds1"
    )


def test_an_unreachable_postgresql_is_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(
        cli,
        ["bench", "ledger", "--allocations", "100", "--db", "postgresql+psycopg://u@127.0.0.1:1/x"],
    )
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot create a scratch schema in ")
    assert len(result.stderr.strip().splitlines()) == 1


def scratch_schema_of(data: dict[str, object]) -> str:
    found = re.search(SCHEMA_PREFIX + r"[0-9a-f]{8}", str(data["database"]))
    assert found is not None, data["database"]
    return found[0]


def test_bench_ledger_on_postgresql_leaves_public_alone_and_drops_its_schema(
    postgres_url: str,
) -> None:
    data = bench("ledger", "--allocations", "100", "--cycle", "50", "--db", postgres_url)
    assert data["ledger_ok"] is True
    tables, schemas = tables_and_scratch_schemas(postgres_url)
    assert tables == set()  # the fixture left public empty
    assert scratch_schema_of(data) not in schemas


def test_bench_manifest_on_postgresql_leaves_public_alone_and_drops_its_schema(
    postgres_url: str,
) -> None:
    args = ["--envelopes", "20", "--prefilled-nonces", "1000", "--db", postgres_url]
    data = bench("manifest", *args)
    assert data["nonces_in_table"] == 1000 + 3 * 20  # in the scratch schema, while it lived
    tables, schemas = tables_and_scratch_schemas(postgres_url)
    assert tables == set()
    assert scratch_schema_of(data) not in schemas


def test_a_bench_that_fails_still_drops_its_schema(postgres_url: str) -> None:
    with pytest.raises(RuntimeError, match="midway"), scratch_database(postgres_url) as db:
        schema = db.schema
        assert schema is not None and schema in tables_and_scratch_schemas(postgres_url)[1]
        raise RuntimeError("the bench failed midway")
    assert schema not in tables_and_scratch_schemas(postgres_url)[1]


def test_a_schema_that_cannot_be_created_is_a_database_error(postgres_url: str) -> None:
    role = "depin_bench_no_create"
    engine = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
            conn.execute(text(f"CREATE ROLE {role} LOGIN"))
        url = postgres_url.replace("postgres@", f"{role}@", 1)
        with pytest.raises(DatabaseError, match="cannot create a scratch schema in "):
            enter_and_leave(url)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f"DROP ROLE IF EXISTS {role}"))
        engine.dispose()
