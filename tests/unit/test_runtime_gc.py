"""The server's garbage-collector settings (``runtime.tune_garbage_collector``): what exists at
start is frozen, and the youngest generation is collected less often; a cycle made afterwards
is still collected."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from jitvault import runtime


@pytest.fixture
def restored_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_the_server_freezes_what_it_loaded_and_collects_young_objects_less_often(
    restored_gc: None,
) -> None:
    old = _Node()
    old.other = old  # a cycle alive at start: frozen, never walked again
    runtime.tune_garbage_collector()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == runtime.GC_YOUNG_THRESHOLD
    # garbage made while serving is still collected
    cycle = _Node()
    cycle.other = cycle
    ref = weakref.ref(cycle)
    del cycle
    gc.collect()
    assert ref() is None
