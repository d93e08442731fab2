"""smppd report: per route and day, from a store whose clock we drive."""

from __future__ import annotations

import calendar

import pytest

from smppd.cli import report
from smppd.model import Status
from smppd.model import NewMessage
from smppd.store import Store

DAY1 = calendar.timegm((2026, 11, 20, 9, 0, 0))
DAY2 = calendar.timegm((2026, 11, 21, 9, 0, 0))


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def message(store, clock, at, n, route, *, segments=1, outcome=None, after=0.0, invalid=False):
    clock.now = at
    r = await store.intake(NewMessage(
        member_id="m", b24_id=f"{n:032x}", code="c", route=route, sender="Shop",
        phone=None if invalid else "+375291234567", text="x", encoding="gsm", segments=segments,
        reason="invalid number: too short" if invalid else None,
    ))
    if outcome is None or invalid:
        return r.id
    for seq in range(segments):
        await store.segment_accepted(r.id, seq, f"{route}-{n}-{seq}")
    clock.now = at + after
    for seq in range(segments):
        await store.apply_receipt(route, f"{route}-{n}-{seq}", outcome, "stat")
    return r.id


@pytest.fixture
async def db(database, make_store):
    """A store with a week of messages, on each engine (the report reads either)."""
    clock = Clock()
    store = await make_store(database, clock=clock)
    await message(store, clock, DAY1, 1, "life", outcome=Status.DELIVERED, after=10)
    await message(store, clock, DAY1 + 60, 2, "life", outcome=Status.DELIVERED, after=30)
    await message(store, clock, DAY1 + 120, 3, "life", outcome=Status.UNDELIVERED, after=99)
    await message(store, clock, DAY1, 4, "mts", invalid=True)
    await message(store, clock, DAY1, 5, "mts")  # still queued
    await message(store, clock, DAY2, 6, "life", segments=2, outcome=Status.DELIVERED, after=5)
    await message(store, clock, DAY1 - 10 * 86400, 7, "life", outcome=Status.DELIVERED, after=1)  # too old
    await store.close()
    return database


def test_daily_rows(db):
    rows = report.daily(db, 7 * 86400, now=DAY2 + 3600, utc=True)
    by = {(r.day, r.route): r for r in rows}
    assert list(by) == [("2026-11-20", "life"), ("2026-11-20", "mts"), ("2026-11-21", "life")]
    life1 = by[("2026-11-20", "life")]
    assert (life1.sent, life1.delivered, life1.undelivered, life1.failed, life1.pending) == (3, 2, 1, 0, 0)
    assert life1.delivery_ratio == round(2 / 3, 4) and life1.median_to_deliver == 20.0 and life1.segments == 3
    mts1 = by[("2026-11-20", "mts")]
    assert (mts1.sent, mts1.failed, mts1.pending, mts1.delivery_ratio, mts1.median_to_deliver) == (2, 1, 1, 0.0, None)
    life2 = by[("2026-11-21", "life")]
    assert (life2.delivered, life2.segments, life2.median_to_deliver, life2.delivery_ratio) == (1, 2, 5.0, 1.0)


def test_render_is_a_table(db):
    text = report.render(report.daily(db, 7 * 86400, now=DAY2 + 3600, utc=True))
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["day", "route", "sent"]
    assert lines[1].split() == ["2026-11-20", "life", "3", "2", "1", "0", "0", "3", "66.7%", "20.0s"]


@pytest.mark.parametrize("text, seconds", [("7d", 604800), ("12h", 43200), ("30m", 1800), ("90", 90), ("2w", 1209600)])
def test_durations(text, seconds):
    assert report.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "seven days", "-1h"])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        report.parse_duration(text)
