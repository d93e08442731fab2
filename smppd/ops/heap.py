"""The heap after start-up: what start-up built is kept out of the cyclic collector's way.

Both processes build tens of thousands of long-lived objects before they serve (modules,
config, routes, aiohttp's app, prometheus' metrics) and then allocate a few hundred
short-lived ones per message. CPython's collector walks every tracked object of a
generation each time it collects it, so the oldest generation's collections (triggered
by the survivors of busy periods) kept walking start-up's objects, which never become
garbage: about 5 µs of the shim's ~110 µs per post and ~10 µs of the daemon's per
message (BENCHMARKS.md, "Issue 15: the bar held"). ``gc.freeze()`` is the standard
library's documented way out: objects alive at that moment move to a permanent
generation that collections skip; reference counting still frees them.

The cost: a frozen object that later becomes part of a garbage cycle is not collected
while frozen. That is bounded: ``settle`` runs again after each reload (the old
config's objects are the garbage a reload makes), unfreezing, collecting and freezing
what is alive then.
"""

from __future__ import annotations

import gc

from . import metrics


def settle() -> int:
    """Collect, then freeze what is alive; the number of objects now frozen.

    Called when a process is ready (before it tells systemd so) and after each reload.
    """
    gc.unfreeze()  # a reload's leftovers (frozen at the last settle) are collectable again
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    metrics.heap_settled(frozen)
    return frozen
