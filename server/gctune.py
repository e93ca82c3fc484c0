"""Garbage-collector settings for a long-running server process.

CPython's cyclic collector runs a young-generation pass every 700 net container allocations,
and every 100th pass goes over every tracked object in the process. A server holds a few
hundred thousand objects that live as long as it does (modules, the compiled flows,
SQLAlchemy's metadata), while each request and each Send API call allocates a few hundred
short-lived ones, some of which are still alive (in flight) when a pass runs and so get
promoted. With the defaults, collections took about a third of the sender's CPU per call
(bench/sender.py: 250–290 ms of collection per 3,000 calls; the bare client, which keeps
nothing alive between calls, 5–10 ms).

`tune()` moves everything alive at start-up out of the collector's sight (`gc.freeze`: those
objects stay for the life of the process anyway) and lets the young generation grow to
`YOUNG_THRESHOLD` objects before a pass, so that request-scoped objects are usually gone by
then. Cycles are still collected, just in fewer, larger passes."""

from __future__ import annotations

import gc

#: Net container allocations before a young-generation pass (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze the objects alive now and raise the young-generation threshold. Call it once,
    in the process that serves, after start-up work (compiling flows) and before serving:
    not in a test process, where frozen objects would never be collected."""
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
