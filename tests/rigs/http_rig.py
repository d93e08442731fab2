"""Helpers for the HTTP-provider tests: a store with messages and a route over a simulator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from smppd import text
from smppd.model import Status
from smppd.model import NewMessage, OpenMessage
from smppd.store import Store

_n = 0


async def add_message(store: Store, route: str, phone: str = "+375291234567", body: str = "Hello",
                      sender: str = "DemoShop") -> OpenMessage:
    global _n
    _n += 1
    enc = text.encode(body)
    res = await store.intake(NewMessage(member_id="m1", b24_id=f"{_n:032x}", code="c", route=route, sender=sender,
                                        phone=phone, text=body, encoding=enc.encoding, segments=enc.segments))
    return OpenMessage(res.id, route, sender, phone, body, tuple(range(enc.segments)))


async def status_of(store: Store, mid: int) -> tuple[Status, dict[str, Any]]:
    m = await store.message(mid)
    assert m is not None
    return Status(m["status"]), m


async def wait_status(store: Store, mid: int, want: set[Status] | None = None, timeout: float = 5.0) -> dict[str, Any]:
    from smppd.model import FINAL

    want = want or set(FINAL)
    deadline = time.monotonic() + timeout
    while True:
        st, m = await status_of(store, mid)
        if st in want:
            return m
        if time.monotonic() > deadline:
            raise AssertionError(f"message {mid} is {st}, wanted {sorted(want)}; events {m['events']}")
        await asyncio.sleep(0.01)


class FakeClock:
    """A wall clock the test moves by hand (poll times are stored in wall-clock seconds)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def store_clock() -> FakeClock:
    """The SMS.ru and SMSC tests' store runs on a clock they move by hand (``store.clock``)."""
    return FakeClock()
