"""The driver-level bulk path behaves the same on SQLite and PostgreSQL (where it is a COPY)."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from depin.db.engine import executemany, make_engine


def test_bulk_insert_writes_every_row_and_a_duplicate_is_an_integrity_error(
    database_url: str,
) -> None:
    engine = make_engine(database_url)
    try:
        with Session(engine) as s:
            s.execute(text("CREATE TABLE bulk_probe (id INTEGER PRIMARY KEY, label TEXT)"))
            rows = [(i, None if i % 3 == 0 else f"row {i}") for i in range(1, 1001)]
            assert executemany(s, "INSERT INTO bulk_probe (id, label) VALUES (?, ?)", rows) == 1000
            stored = s.execute(text("SELECT id, label FROM bulk_probe ORDER BY id")).all()
            assert [tuple(r) for r in stored] == rows
            with pytest.raises(IntegrityError):
                executemany(s, "INSERT INTO bulk_probe (id, label) VALUES (?, ?)", [(7, "again")])
    finally:
        engine.dispose()
