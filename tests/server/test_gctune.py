"""The serving process's garbage-collector settings (server/gctune.py)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from server import gctune


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


@pytest.mark.usefixtures("restored_gc")
def test_tune_freezes_what_is_alive_and_raises_the_young_threshold() -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    kept = [object() for _ in range(3)]
    assert any(o is kept for o in gc.get_objects())
    gctune.tune()
    assert gc.get_threshold() == (gctune.YOUNG_THRESHOLD, 10, 10)
    # Frozen: in the permanent generation, which no collection walks.
    assert not any(o is kept for o in gc.get_objects())
    assert gc.get_freeze_count() > 0


@pytest.mark.usefixtures("restored_gc")
def test_tune_again_collects_cycles_left_by_what_it_froze_before() -> None:
    """A reload calls tune() again: the replaced program's cycles must not stay frozen."""
    gc.unfreeze()

    class Node:
        pass

    cycle = Node()
    cycle.self = cycle  # type: ignore[attr-defined]
    alive = weakref.ref(cycle)
    gctune.tune()
    del cycle
    gc.collect()
    assert alive() is not None  # frozen: no collection frees it
    gctune.tune()
    assert alive() is None
