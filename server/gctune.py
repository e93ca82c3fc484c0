"""Garbage-collector settings for a long-running server process.

CPython's cyclic collector runs a young-generation pass every 700 net container allocations,
and every 100th pass goes over every tracked object in the process. A server holds a few
hundred thousand objects that live as long as it does (modules, the compiled flows,
SQLAlchemy's metadata), while each request and each Send API call allocates a few hundred
short-lived ones, some of which are still alive (in flight) when a pass runs and so get
promoted. Measured:

- without freezing, full collections walked the start-up objects while requests waited:
  p99 ack latency under load fell from about 80 ms to 13 ms once they were frozen, and
  throughput rose by a quarter;
- with the default young threshold, collections still took about a third of the sender's CPU
  (bench/sender.py: 250–290 ms of collection per 3,000 sends, the bare client 5–10 ms);
  with 10,000, 10–40 ms.

`tune()` does both: everything alive at that moment leaves the collector's sight
(`gc.freeze`; it is still freed by reference counting, only cycles among it are never
collected), and the young generation may grow to `YOUNG_THRESHOLD` objects before a pass, so
that request-scoped objects are usually gone by then. Cycles are still collected, in fewer,
larger passes."""

from __future__ import annotations

import gc

#: Net container allocations before a young-generation pass (CPython's default: 700).
YOUNG_THRESHOLD = 10_000


def tune() -> None:
    """Freeze the objects alive now and raise the young-generation threshold. The server calls
    it when it has started and after each reload of the flows (unfreezing first, so that the
    replaced flows' cycles are collected once); benchmarks call it for their bare baselines."""
    gc.unfreeze()
    gc.collect()  # what start-up (or the replaced program) left as garbage is freed, not frozen
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
