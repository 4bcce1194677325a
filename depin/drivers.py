"""Drivers: the processes that launch work (a scheduler, a waiting submit, a server's loop).

Each registers, heartbeats while it lives and retires when it stops; one
silent for ``DRIVER_TIMEOUT_S`` is dead, and reconciliation requeues its work.
Functions here work inside the caller's transaction.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from depin.db.models import Driver, utcnow
from depin.limits import DRIVER_TIMEOUT_S


def register(s: Session, kind: str) -> str:
    driver_id = f"{kind}-{uuid.uuid4().hex[:12]}"
    s.add(Driver(id=driver_id, kind=kind, host=socket.gethostname()[:128], pid=os.getpid()))
    return driver_id


def heartbeat(s: Session, driver_id: str) -> None:
    s.execute(update(Driver).where(Driver.id == driver_id).values(heartbeat_at=utcnow()))


def retire(s: Session, driver_id: str) -> None:
    s.execute(Driver.__table__.delete().where(Driver.id == driver_id))


def scheduler_alive(s: Session, now: datetime | None = None) -> bool:
    """True when a scheduler (not a waiting submit) heartbeated within the timeout."""
    cutoff = (now or utcnow()) - timedelta(seconds=DRIVER_TIMEOUT_S)
    live = select(Driver.id).where(Driver.kind == "scheduler", Driver.heartbeat_at >= cutoff)
    return s.execute(live).first() is not None
