"""Schema management: Alembic in code, applied on first use and by ``depin db upgrade``.

Two processes opening a fresh database at once must not both migrate it: on
PostgreSQL an advisory lock serializes them, on SQLite the ``BEGIN IMMEDIATE``
that starts the migration transaction does.
"""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

import migrations
from depin.config import redact_url
from depin.errors import DatabaseError, InputError

# An arbitrary constant: the key of the advisory lock that serializes migrations.
_PG_MIGRATION_LOCK_KEY = 0x6465_7069_6E00


def script_location() -> Path:
    return Path(migrations.__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.attributes["connection"] = connection
    return cfg


@functools.cache
def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "migrations/ has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK_KEY})


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the schema up to ``revision`` in one locked transaction."""
    try:
        with engine.begin() as conn:
            _lock(conn)
            command.upgrade(alembic_config(conn), revision)
    except CommandError as exc:  # an unknown revision, most often
        raise InputError(f"cannot migrate to {revision!r}: {exc} (try `head`)") from exc
    except OperationalError as exc:
        raise DatabaseError(
            f"cannot migrate {redact_url(str(engine.url))}: {str(exc.orig).splitlines()[0]}"
        ) from exc


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (``base`` drops everything)."""
    with engine.begin() as conn:
        _lock(conn)
        command.downgrade(alembic_config(conn), revision)


def ensure_schema(engine: Engine) -> None:
    """Migrate to head unless the database is there already (a cheap check)."""
    try:
        current = current_revision(engine)
    except OperationalError as exc:
        raise DatabaseError(
            f"cannot open database {redact_url(str(engine.url))}: {str(exc.orig).splitlines()[0]}"
        ) from exc
    if current != head_revision():
        upgrade(engine)
