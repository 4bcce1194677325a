"""Signed submissions, one per HTTP request, handed to the market in groups.

Each request thread hands its submission to ``SubmissionBatcher.submit`` and
waits; one thread takes whatever has queued (up to ``MAX_GROUP``), has the
market admit each and queue them all in one transaction
(``Marketplace.submit_each``), and answers every waiter with its own job or
its own error. Under load a group grows by itself; alone, a submission waits
for nobody.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field

from depin.db.group import STOP, next_batch
from depin.errors import DepinError
from depin.intake import Submission
from depin.market import Marketplace
from depin.views import JobView

log = logging.getLogger("depin.api")
MAX_GROUP = 256  # submissions in one transaction at most


@dataclass
class _Waiting:
    submission: Submission
    done: threading.Event = field(default_factory=threading.Event)
    answer: JobView | DepinError | None = None


class SubmissionBatcher:
    """One thread that queues concurrent submissions together."""

    def __init__(self, market: Marketplace, *, max_group: int = MAX_GROUP) -> None:
        self.market = market
        self.max_group = max_group
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name="depin-intake", daemon=True)
        self._thread.start()

    def submit(self, submission: Submission) -> JobView:
        """The job ``submission`` became, once its group has committed (or its error)."""
        waiting = _Waiting(submission)
        self._queue.put(waiting)
        waiting.done.wait()
        if isinstance(waiting.answer, DepinError):
            raise waiting.answer
        assert waiting.answer is not None
        return waiting.answer

    def close(self) -> None:
        self._queue.put(STOP)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while (group := next_batch(self._queue, self.max_group)) is not None:
            self._answer(group)

    def _answer(self, group: list[_Waiting]) -> None:
        try:
            answers = self.market.submit_each([w.submission for w in group])
        except DepinError as exc:  # the group failed as a whole (the database): each is told
            answers = [exc] * len(group)
        except Exception as exc:  # a bug must not leave requests waiting for ever
            log.exception("a group of %d submissions failed", len(group))
            answers = [DepinError(f"internal error: {type(exc).__name__}")] * len(group)
        for waiting, answer in zip(group, answers, strict=True):
            waiting.answer = answer
            waiting.done.set()
