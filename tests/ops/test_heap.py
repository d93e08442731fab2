"""ops/heap.py: start-up's objects frozen out of the collector's reach, a reload's garbage still collected."""

from __future__ import annotations

import gc
import weakref

import pytest
from prometheus_client import REGISTRY

from smppd.ops import heap


class _Node:
    """A tracked object that can sit in a reference cycle."""

    def __init__(self) -> None:
        self.other: object = self


@pytest.fixture(autouse=True)
def _thawed():
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()  # the rest of the suite runs with the collector as it was
    gc.set_threshold(*threshold)


def test_settle_freezes_what_is_alive_and_reports_it():
    alive = _Node()
    frozen = heap.settle()
    assert frozen == gc.get_freeze_count() > 0
    assert REGISTRY.get_sample_value("smppd_heap_frozen_objects") == frozen
    # a frozen object is skipped by collections: it is in no generation any more
    assert not any(alive is o for o in gc.get_objects())


def test_settle_collects_the_young_less_often_and_leaves_the_older_generations_alone():
    gc.set_threshold(700, 10, 10)
    heap.settle()
    assert gc.get_threshold() == (heap.YOUNG_OBJECTS, 10, 10)


def test_a_cycle_frozen_at_start_is_collected_after_the_next_settle():
    """What a reload replaces (the old config, in cycles) must not stay for ever."""
    old = _Node()
    gone = weakref.ref(old)
    heap.settle()
    del old
    gc.collect()
    assert gone() is not None  # frozen: the collector does not look at it
    heap.settle()
    assert gone() is None


def test_garbage_made_after_settle_is_collected_as_usual():
    heap.settle()
    made = _Node()
    gone = weakref.ref(made)
    del made
    gc.collect()
    assert gone() is None
