"""Pausing Python's cyclic garbage collector for a stretch of allocation-heavy work.

CPython frees an object when its last reference goes; the cyclic collector exists for the
objects that refer to each other in a loop, and it runs whenever allocations outnumber
deallocations by a threshold (700 for the youngest generation). A burst of beat allocates
tens of thousands of objects that all stay alive until their batch is done (its triggers, their
executions, the rows and messages made of them), so the collector ran over and over through
objects that were never garbage, and twice through everything the process holds (Django's
models, URL patterns, the burst). In a 10,000-trigger burst its collections took 170 ms of
beat's 1.2-1.5 s of CPU (timed with gc.callbacks), and a full collection after the burst found
about 60 cyclic objects to free.

``paused()`` turns the collector off for the block and back on after it (only if it was on when
the block started), so cyclic garbage made in the block is collected as usual afterwards. Use it
around work that is bounded and makes little cyclic garbage, on a thread that owns the process's
pace (beat's dispatch): the switch is for the whole process.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def paused() -> Iterator[None]:
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
