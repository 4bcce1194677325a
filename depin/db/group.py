"""Group commit: the transactions of many concurrent requests, committed together by one writer.

A server handles many requests at once, and SQLite admits one writer at a time:
threads that each open a write transaction queue on the database's lock and
sleep in its busy handler. Instead, each request hands its transaction's work
to ``GroupCommit.run`` and waits; one writer thread takes whatever has queued
(up to ``MAX_BATCH``), runs each piece of work in a savepoint of one shared
transaction (so one that fails is rolled back alone, with its own error), and
commits once. Every caller then gets its own result or error, after the
commit: nothing is answered before it is durable. Databases do the same with
their log (group commit); the order within a batch is the order of arrival.

If the shared commit itself fails (a conflict PostgreSQL reports only at
commit), each piece of work runs again in a transaction of its own, with the
usual retries.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from depin.db.engine import as_database_error, is_retryable, run_transaction
from depin.errors import DatabaseError

T = TypeVar("T")
MAX_BATCH = 512  # pieces of work in one transaction at most
STOP = object()  # put on a writer's queue to end its loop


@dataclass
class _Work:
    work: Callable[[Session], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


def next_batch(waiting: queue.SimpleQueue[Any], most: int) -> list[Any] | None:
    """The next batch from a writer's queue: wait for one item, then take whatever else has
    queued, up to ``most``; None once ``STOP`` arrives (after what came before it)."""
    first = waiting.get()
    if first is STOP:
        return None
    batch = [first]
    while len(batch) < most:
        try:
            more = waiting.get_nowait()
        except queue.Empty:
            break
        if more is STOP:
            waiting.put(STOP)  # answer this batch; the next call ends the loop
            break
        batch.append(more)
    return batch


class GroupCommit:
    """One writer thread for a process's write transactions; ``run`` blocks until committed."""

    def __init__(self, sessions: sessionmaker[Session], *, max_batch: int = MAX_BATCH) -> None:
        self.sessions = sessions
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.batches = 0  # how many shared transactions committed (for the bench)
        self.committed = 0
        self._stopped: str | None = None  # why the writer thread ended, if it did
        self._thread = threading.Thread(target=self._loop, name="depin-writer", daemon=True)
        self._thread.start()

    def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in the next shared transaction; its result once that has committed."""
        if threading.current_thread() is self._thread:
            # A transaction of its own would wait on the writer's (for ever, on PostgreSQL).
            raise RuntimeError("work in a shared transaction may not open another")
        if self._stopped is not None:
            raise DatabaseError(f"the market's writer stopped ({self._stopped}): restart it")
        item = _Work(work)
        self._queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result  # type: ignore[no-any-return]

    def close(self) -> None:
        self._queue.put(STOP)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        try:
            while (batch := next_batch(self._queue, self.max_batch)) is not None:
                self._commit(batch)
        except BaseException as exc:
            self._stopped = type(exc).__name__
            raise
        finally:  # whoever still waits is told, not left waiting
            self._stopped = self._stopped or "closed"
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not STOP:
                    item.error = DatabaseError("the market's writer stopped: retry the request")
                    item.done.set()

    def _commit(self, batch: list[_Work]) -> None:
        alone: list[_Work] = []  # work to run again in a transaction of its own
        try:
            with self.sessions.begin() as session:
                for item in batch:
                    try:
                        with session.begin_nested():
                            item.result = item.work(session)
                    except DBAPIError as exc:
                        if is_retryable(exc):  # a conflict: alone, it gets the usual retries
                            alone.append(item)
                        else:
                            item.error, item.result = as_database_error(exc), None
                    except Exception as exc:  # this request's error, not the batch's
                        item.error, item.result = exc, None
            self.batches += 1
            self.committed += len(batch) - len(alone)
        except DBAPIError:  # the shared commit failed: each on its own, with the usual retries
            alone = batch
        except BaseException as exc:  # the writer must answer every waiter, whatever happened
            for item in batch:
                item.error = item.error or exc
                item.done.set()
            raise
        for item in alone:
            item.error = None
            try:
                item.result = run_transaction(self.sessions, item.work)
            except Exception as exc:
                item.error = exc
        for item in batch:
            item.done.set()
