"""The journal's connection lives in one thread: closing never races a read."""

from __future__ import annotations

import asyncio
import threading
import time

from smppd.ops.journal import StoreWatcher
from smppd.model import NewMessage
from smppd.store import Store


async def test_close_waits_for_a_read_that_a_cancel_left_running(tmp_path):
    path = str(tmp_path / "s.db")
    store = Store(path)
    await store.open()
    watcher = StoreWatcher(path, lambda: [])
    await watcher.tail()  # positioned at the end
    await store.intake(NewMessage(member_id="m", b24_id="0" * 32, code="c", route="life", sender="S",
                                  phone="+375291234567", text="x", encoding="gsm", segments=1))
    started, outcome = threading.Event(), []
    read = watcher._read_events

    def slow_read():
        started.set()
        time.sleep(0.05)  # the loop cancels and closes meanwhile
        try:
            outcome.append(read())
        except Exception as e:  # a connection closed under the read
            outcome.append(e)
        return outcome[-1]

    watcher._read_events = slow_read
    task = asyncio.create_task(watcher.tail())
    await asyncio.to_thread(started.wait)
    task.cancel()
    await watcher.aclose()
    assert outcome[0].events == 1, outcome
    assert watcher._conn is None
    await store.close()
