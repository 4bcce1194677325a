"""In-process wake-ups: a submission wakes the scheduler loop, a reservation or a cancel
wakes the agents' held requests for work.

Only waiters in the same process are woken (a ``depin serve`` worker and its scheduler
loop); waiters elsewhere look again on their own timer, so a missed wake-up costs a
poll interval, never a lost job.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

JOBS = "jobs"  # a job was queued: plan again
WORK = "work"  # an allocation was reserved, or a running one cancelled: agents, look


class Wakeups:
    """A counter per topic, and a condition to wait for it to move."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._seq: dict[str, int] = {JOBS: 0, WORK: 0}
        self.closed = False  # the process is stopping: waiters return at once
        # Event-loop waiters (a server's held requests): woken without holding a thread.
        self._async: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {
            JOBS: set(),
            WORK: set(),
        }

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()
            for topic in self._async:
                self._wake_async(topic)

    def _wake_async(self, topic: str) -> None:
        # Only this topic's waiters: a submission must not send every held long-poll to the
        # database just as the scheduler reads it.
        for loop, event in self._async[topic]:
            loop.call_soon_threadsafe(event.set)

    def notify(self, topic: str) -> None:
        with self._changed:
            self._seq[topic] += 1
            self._changed.notify_all()
            self._wake_async(topic)

    def seq(self, topic: str) -> int:
        with self._changed:
            return self._seq[topic]

    def wait(self, topic: str, since: int, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for ``topic`` to move past ``since``; True if it did."""
        with self._changed:
            return self._changed.wait_for(
                lambda: self.closed or self._seq[topic] != since, timeout_s
            )

    async def wait_async(self, topic: str, since: int, timeout_s: float) -> bool:
        """``wait`` for an event loop: no thread is held while it waits."""
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._changed:
            if self.closed or self._seq[topic] != since:
                return True
            self._async[topic].add(waiter)
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            pass
        finally:
            with self._changed:
                self._async[topic].discard(waiter)
        return self.closed or self.seq(topic) != since

    def sleeper(self, topic: str) -> Callable[[float], None]:
        """A ``time.sleep`` stand-in that returns early when ``topic`` moves."""
        seen = [self.seq(topic)]

        def sleep(timeout_s: float) -> None:
            self.wait(topic, seen[0], timeout_s)
            seen[0] = self.seq(topic)

        return sleep
