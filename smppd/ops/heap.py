"""The heap after start-up: what start-up built is kept out of the cyclic collector's way.

Both processes build tens of thousands of long-lived objects before they serve (modules,
config, routes, aiohttp's app, prometheus' metrics) and then allocate a few hundred
short-lived ones per message. CPython's collector walks every tracked object of a
generation each time it collects it, so the oldest generation's collections (triggered
by the survivors of busy periods) kept walking start-up's objects, which never become
garbage (the shim alone, ``bench/shim_path.py``: 111 -> 105 µs per post once frozen).
``gc.freeze()`` is the standard library's documented way out: objects alive at that
moment move to a permanent generation that collections skip; reference counting still
frees them.

The cost: a frozen object that later becomes part of a garbage cycle is not collected
while frozen. That is bounded: ``settle`` runs again after each reload (the old
config's objects are the garbage a reload makes), unfreezing, collecting and freezing
what is alive then.

The youngest generation is collected after ``YOUNG_OBJECTS`` net allocations instead of
CPython's 700. A post or a message in flight holds a few hundred tracked objects for tens
of milliseconds, so at 700 nearly every young collection walked the objects of the ~100
posts in flight, only to promote them; most of them are freed by reference counting
before 10,000 allocations pass. Collector time measured with ``gc.callbacks`` over
``bench/e2e.py -n 20000`` (start-up frozen in every row), seconds per run:

    threshold   daemon   shim
    700         0.122    0.243
    2,000       0.090    0.093
    5,000       0.068    0.024
    10,000      0.056    0.026
    20,000      0.052    0.025

so 10,000 takes 3.3 µs per message off the daemon and 10.9 off the shim; a young
collection then walks at most 10,000 objects (about a millisecond).
"""

from __future__ import annotations

import gc

from . import metrics

YOUNG_OBJECTS = 10_000
"""Net allocations of tracked objects between two collections of the youngest generation."""


def settle() -> int:
    """Collect, freeze what is alive, collect the young less often; the number of objects
    now frozen.

    Called when a process is ready (before it tells systemd so) and after each reload.
    """
    gc.unfreeze()  # a reload's leftovers (frozen at the last settle) are collectable again
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_OBJECTS, middle, oldest)
    frozen = gc.get_freeze_count()
    metrics.heap_settled(frozen)
    return frozen
