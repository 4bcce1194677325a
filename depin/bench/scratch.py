"""The database a bench writes to: ``--db`` on PostgreSQL gets a scratch schema of its own.

A bench adds accounts, nodes, jobs and nonces by the thousand. Given a
PostgreSQL URL it creates a fresh schema (``bench_<hex>``) and hands on a URL
whose connections name it first in their ``search_path`` (libpq's
``options``), so the migrations create every table there, and a ``depin
serve`` the bench starts finds them from the URL alone; the schema and all in
it are dropped when the bench ends, however it ends. A SQLite URL names a file
the person chose: the bench appends to it and says so. With no URL a bench
uses a fresh SQLite file in a temporary home, as before.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError

from depin.config import redact_url
from depin.db.engine import make_engine
from depin.errors import ConfigError, DatabaseError

SCHEMA_PREFIX = "bench_"
# A drop waits this long for a lock (a server the bench started that has not let go yet).
DROP_LOCK_TIMEOUT_S = 30


@dataclass(frozen=True, slots=True)
class Scratch:
    """Where a bench writes: ``url`` for its settings (None: its own fresh SQLite file),
    ``description`` for its output, ``schema`` when it is a scratch schema."""

    url: str | None
    description: str
    schema: str | None = None


@contextmanager
def scratch_database(url: str | None) -> Iterator[Scratch]:
    """``url`` as a bench should use it: PostgreSQL in a fresh schema dropped on the way
    out, SQLite as given (it appends), no URL as none (a fresh SQLite file)."""
    if url is None:
        yield Scratch(None, "sqlite, a fresh file")
        return
    if url.startswith("sqlite"):
        yield Scratch(url, f"sqlite, appending to {redact_url(url)} (its rows stay)")
        return
    if not url.startswith("postgresql"):
        raise ConfigError(
            f"unsupported database URL {redact_url(url)!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST:PORT/DB"
        )
    schema = SCHEMA_PREFIX + secrets.token_hex(4)
    admin = make_engine(url)
    try:
        _execute(admin, [f"CREATE SCHEMA {schema}"], "cannot create a scratch schema")
        scratch = Scratch(
            with_search_path(url, schema),
            f"postgresql, scratch schema {schema} in {redact_url(url)} (dropped afterwards)",
            schema,
        )
        try:
            yield scratch
        except BaseException:
            with suppress(DatabaseError):  # the bench's own error is the one to report
                drop_schema(admin, schema)
            raise
        drop_schema(admin, schema)
    finally:
        admin.dispose()


@contextmanager
def temporary_home() -> Iterator[Path]:
    """A DEPIN_HOME for one run (its keys; its SQLite file unless ``--db``), removed after."""
    home = Path(tempfile.mkdtemp(prefix="depin-bench-"))
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


def with_search_path(url: str, schema: str) -> str:
    """``url`` with ``schema`` first (and alone) on every connection's search path."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"malformed database URL {redact_url(url)!r}") from exc
    given = parsed.query.get("options")
    options = [given] if isinstance(given, str) else list(given or ())
    options.append(f"-csearch_path={schema}")
    return parsed.update_query_dict({"options": " ".join(options)}).render_as_string(
        hide_password=False
    )


def drop_schema(engine: Engine, schema: str) -> None:
    """Drop ``schema`` and everything in it."""
    _execute(
        engine,
        [
            f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT_S}s'",
            f"DROP SCHEMA IF EXISTS {schema} CASCADE",
        ],
        f"cannot drop scratch schema {schema} (drop it by hand: DROP SCHEMA {schema} CASCADE)",
    )


def _execute(engine: Engine, statements: list[str], failure: str) -> None:
    """``statements`` in one transaction; a driver error becomes one line naming ``failure``."""
    try:
        with engine.begin() as conn:
            for statement in statements:
                conn.execute(text(statement))
    except DBAPIError as exc:
        where = redact_url(engine.url.render_as_string(hide_password=False))
        reason = str(exc.orig).splitlines()[0]
        raise DatabaseError(f"{failure} in {where}: {reason}") from exc
