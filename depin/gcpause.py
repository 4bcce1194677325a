"""Pausing the cyclic garbage collector around big, acyclic bursts of allocation."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block without cyclic collections.

    A scheduling cycle allocates a few small, acyclic objects per job; a full
    collection in the middle would walk every live object of the process
    (every queued JobSpec) and cost more than the cycle itself. Reference
    counting still frees everything; collections resume at the end.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
