"""Engines and sessions: SQLite tuned for concurrent writers, PostgreSQL by URL.

SQLite runs in WAL mode with a busy timeout, and every transaction starts with
``BEGIN IMMEDIATE``: a writer takes the write lock up front instead of failing
with "database is locked" when it upgrades from a read lock halfway through.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from depin.config import redact_url
from depin.errors import DatabaseError
from depin.limits import TRANSACTION_ATTEMPTS, transaction_backoff_s

SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "depin_read_only"  # execution option: a read session's transaction
# Page cache per connection: a 20k-job cycle touches tens of MB of pages in one transaction.
SQLITE_CACHE_KIB = 128 * 1024
# PostgreSQL serialization failure and deadlock: safe to retry the whole transaction.
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# An INSERT of one row of placeholders and nothing else: on PostgreSQL it can be a COPY.
_PLAIN_INSERT = re.compile(r"^INSERT INTO (\w+) \(([\w, ]+)\) VALUES \(\?(?:, \?)*\)$")

T = TypeVar("T")


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url`` with depin's SQLite pragmas or PostgreSQL settings."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs
            )
            _tune_sqlite(engine)
        else:
            engine = create_engine(url, pool_pre_ping=True, **kwargs)
    except (ImportError, ModuleNotFoundError) as exc:
        raise DatabaseError(
            f"no driver for {redact_url(url)}: "
            "install the extra with `pip install 'depin[postgres]'`"
        ) from exc
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front (no deadlocked lock upgrades); readers take
        # none: under WAL they read a snapshot and never hold a writer up.
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    """A PostgreSQL serialization failure or deadlock, or SQLite busy past its timeout."""
    if isinstance(exc, DBAPIError):
        sqlstate = getattr(exc.orig, "sqlstate", None)
        if sqlstate in RETRYABLE_SQLSTATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(exc.orig):
            return True
    return False


def run_transaction(
    sessions: sessionmaker[Session],
    work: Callable[[Session], T],
    *,
    attempts: int = TRANSACTION_ATTEMPTS,
) -> T:
    """Run ``work`` in one transaction, retrying it whole on retryable conflicts.

    ``work`` must be safe to run again: it reads what it needs inside the transaction.
    """
    for attempt in range(1, attempts + 1):
        try:
            with sessions.begin() as session:
                return work(session)
        except DBAPIError as exc:
            if is_retryable(exc) and attempt < attempts:
                time.sleep(transaction_backoff_s(attempt))
                continue
            raise as_database_error(exc) from exc
    raise AssertionError("unreachable")


def as_database_error(exc: DBAPIError) -> Exception:
    """A driver error as depin raises it: an unreachable or failing database is a
    ``DatabaseError`` (one line); a constraint the caller maps itself stays as it is."""
    if isinstance(exc, OperationalError):
        return DatabaseError(f"database error: {str(exc.orig).splitlines()[0]}")
    return exc


@contextmanager
def read_session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session for reads; commits nothing. Closing it (not rolling back) keeps the
    loaded objects readable after the session ends."""
    with sessions() as session:
        try:
            session.connection(execution_options={READ_ONLY: True})
            yield session
        except OperationalError as exc:  # as for writes: an unreachable database is one line
            raise as_database_error(exc) from exc


def reserve_ids(session: Session, table: str, n: int) -> list[int]:
    """``n`` fresh primary keys for ``table``, to insert rows that others reference at once.

    PostgreSQL draws them from the table's sequence; SQLite takes max(id)+1...
    under the write lock its ``BEGIN IMMEDIATE`` transaction already holds.
    """
    if n == 0:
        return []
    if session.get_bind().dialect.name == "postgresql":
        rows = session.execute(
            text(
                f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
                "FROM generate_series(1, :n)"
            ),
            {"n": n},
        )
        return [int(r[0]) for r in rows]
    start = session.execute(text(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")).scalar_one()
    return list(range(start, start + n))


def executemany(session: Session, sql: str, rows: list[tuple[Any, ...]]) -> int:
    """One statement over many parameter tuples, straight to the driver; returns rows affected.

    ``sql`` uses ``?`` placeholders. The ORM's per-row parameter processing
    costs more than SQLite's insert itself on a 20k-row cycle, so the hot
    paths (reserving a cycle, appending ledger entries) hand plain values to
    the driver: ints, strings and ``db_time`` timestamps.
    """
    if not rows:
        return 0
    conn = session.connection()
    if conn.dialect.name != "postgresql":
        return conn.exec_driver_sql(sql, rows).rowcount
    insert = _PLAIN_INSERT.match(sql)
    if insert is None:
        return conn.exec_driver_sql(sql.replace("?", "%s"), rows).rowcount
    # PostgreSQL runs an executemany row by row through its executor; COPY streams the
    # rows into the table in the same transaction, constraints and triggers included.
    table, columns = insert.group(1), insert.group(2)
    statement = f"COPY {table} ({columns}) FROM STDIN"
    dbapi = conn.dialect.dbapi
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except dbapi.Error as exc:  # type: ignore[union-attr]
        # As SQLAlchemy would raise it, so retries and error messages treat it alike.
        raise DBAPIError.instance(statement, rows[:1], exc, dbapi.Error) from exc  # type: ignore[union-attr]
    return len(rows)


def db_time(session: Session, value: datetime | None) -> Any:
    """A UTC timestamp as ``UtcDateTime`` stores it: naive text on SQLite, aware on PostgreSQL."""
    if value is None or session.get_bind().dialect.name == "postgresql":
        return value
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
