"""``smppd report``: per route and day, what was sent and what became of it.

Read straight from the SQLite store through a read-only connection, so it
works with the daemon stopped and never waits for (or blocks) its writer.
A message counts on the day it was received.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from ..model import FAILED_FINALS, OPEN, UNDELIVERED_FINALS, Status
from ..store import reader
from ..store.reader import Connection, connect_readonly


@dataclass(frozen=True)
class DayRow:
    day: str
    route: str
    sent: int  # messages received, whatever became of them
    delivered: int
    undelivered: int  # undelivered + expired
    failed: int  # rejected + failed (including invalid numbers)
    pending: int  # not final yet
    segments: int
    delivery_ratio: float | None  # delivered / final; None when nothing is final yet
    median_to_deliver: float | None  # seconds from intake to delivered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def daily(database: str, since: float, *, now: float | None = None, utc: bool = False) -> list[DayRow]:
    """Rows for messages received in the last ``since`` seconds, by day and route."""
    now = time.time() if now is None else now
    conn = connect_readonly(database)
    try:
        return _daily(conn, now - since, utc)
    finally:
        conn.close()


def _daily(conn: Connection, cutoff: float, utc: bool) -> list[DayRow]:
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for row in reader.daily_counts(conn, cutoff, utc):
        c = counts.setdefault((row.day, row.route), {"segments": 0})
        c[row.status] = c.get(row.status, 0) + row.messages
        c["segments"] += row.segments
    times: dict[tuple[str, str], list[float]] = {}
    for t in reader.delivery_times(conn, cutoff, utc):
        times.setdefault((t.day, t.route), []).append(t.seconds)
    rows = []
    for (d, route), c in sorted(counts.items()):
        delivered = c.get(Status.DELIVERED, 0)
        undelivered = sum(c.get(s, 0) for s in UNDELIVERED_FINALS)
        failed = sum(c.get(s, 0) for s in FAILED_FINALS)
        final = delivered + undelivered + failed
        t = times.get((d, route))
        rows.append(DayRow(
            day=d, route=route, sent=sum(v for k, v in c.items() if k != "segments"),
            delivered=delivered, undelivered=undelivered, failed=failed,
            pending=sum(c.get(s, 0) for s in OPEN), segments=c["segments"],
            delivery_ratio=round(delivered / final, 4) if final else None,
            median_to_deliver=round(statistics.median(t), 1) if t else None,
        ))
    return rows


HEADER = ("day", "route", "sent", "delivered", "undeliv.", "failed", "pending", "segments", "ratio", "median")


def render(rows: list[DayRow]) -> str:
    """A plain table for a terminal; ``--json`` is for scripts."""
    lines = [HEADER]
    for r in rows:
        lines.append((
            r.day, r.route, str(r.sent), str(r.delivered), str(r.undelivered), str(r.failed), str(r.pending),
            str(r.segments), "-" if r.delivery_ratio is None else f"{r.delivery_ratio:.1%}",
            "-" if r.median_to_deliver is None else _duration(r.median_to_deliver),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(HEADER))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` or plain seconds; ValueError otherwise."""
    t = text.strip().lower()
    unit = UNITS.get(t[-1:]) if t else None
    number = t[:-1] if unit else t
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (use e.g. 7d, 12h, 30m, 90s)") from None
    if value < 0:
        raise ValueError(f"not a duration: {text!r} (must not be negative)")
    return value * (unit or 1)
