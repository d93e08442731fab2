"""The journal's lean tail gives exactly what the old one-wide-row-per-event tail gave.

``_TAIL_SQL`` reads only what counting an event needs and reads the few events that get a
log line again by id. The reference below is the tail as it was (every event's ids, texts
and message columns in one wide row): on every shape of a message's life
(test_store_status_path.life), read in batches of every size, both must give the same
counts, latencies, ``message_final`` lines and ``message_status_ignored`` lines.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from smppd.ops import journal
from smppd.ops.journal import StoreWatcher
from smppd.store.reader import connect_readonly
from smppd.model import FINAL, Status

from tests.rigs.status_rig import life

_FINALS = "('delivered','undelivered','expired','rejected','failed')"
REFERENCE_SQL = f"""
SELECT e.id, e.row_id, e.seq, e.status, e.applied, e.detail, e.at,
       m.b24_id, m.route, m.status, m.reason, m.created_at, m.updated_at,
       CASE WHEN e.applied = 1 AND e.status IN {_FINALS} THEN
         (SELECT a.at FROM event a WHERE a.row_id = e.row_id AND a.seq = e.seq
            AND a.status = 'accepted' AND a.applied = 1 ORDER BY a.id LIMIT 1)
       END
FROM event e
JOIN message m ON m.id = e.row_id
WHERE e.id > ? ORDER BY e.id LIMIT ?
"""


class ReferenceTail:
    """The tail before the lean read, kept as the oracle."""

    def __init__(self, path: str) -> None:
        self.db = connect_readonly(path)
        self.last_event = 0
        self.last_finals: set[int] = set()

    def read(self, limit: int) -> dict[str, Any]:
        rows = self.db.execute(REFERENCE_SQL, (self.last_event, limit)).fetchall()
        out: dict[str, Any] = {"events": len(rows), "counts": {}, "latencies": [], "finals": [], "ignored": []}
        if not rows:
            return out
        self.last_event = rows[-1][0]
        final_rows: dict[int, tuple[Any, ...]] = {}
        for row in rows:
            _, row_id, seq, status, applied, detail, at, b24_id, route, message_status = row[:10]
            if not applied:
                out["ignored"].append({"id": row_id, "b24_id": b24_id, "route": route, "seq": seq,
                                       "status": status, "message_status": message_status, "detail": detail})
                continue
            out["counts"][(route, status)] = out["counts"].get((route, status), 0) + 1
            if row[13] is not None:
                out["latencies"].append((route, status, max(0.0, at - row[13])))
            if status == message_status and at == row[12] and Status(status) in FINAL:
                final_rows[row_id] = row
        for mid in self.last_finals.intersection(final_rows):
            del final_rows[mid]
        self.last_finals = set(final_rows)
        smsc_ids: dict[int, list[str]] = {}
        for mid, pid in self.db.execute(
            f"SELECT row_id, smsc_id FROM segment WHERE row_id IN ({','.join('?' * len(final_rows))})"
            " AND smsc_id IS NOT NULL ORDER BY row_id, seq", sorted(final_rows),
        ):
            smsc_ids.setdefault(mid, []).append(pid)
        out["finals"] = [
            {"id": r[1], "b24_id": r[7], "route": r[8], "smsc_ids": smsc_ids.get(r[1], []),
             "status": r[9], "reason": r[10], "seconds": round(r[12] - r[11], 3)}
            for r in final_rows.values()
        ]
        return out


def lean(watcher: StoreWatcher) -> dict[str, Any]:
    b = watcher._read_events()
    return {"events": b.events, "counts": b.counts, "latencies": b.latencies, "finals": b.finals,
            "ignored": b.ignored}


@pytest.fixture
async def database(tmp_path) -> str:
    path = str(tmp_path / "life.db")
    await life(path)
    return path


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 7, 1000])
async def test_the_lean_tail_gives_what_the_wide_rows_gave(database, batch, monkeypatch):
    monkeypatch.setattr(journal, "TAIL_BATCH", batch)
    reference, watcher = ReferenceTail(database), StoreWatcher(database, lambda: [])
    watcher._last_event = 0  # from the start, as the reference
    reads = 0
    while True:
        want, got = reference.read(batch), lean(watcher)
        assert got == want, reads
        reads += 1
        if not want["events"]:
            break
    watcher._close()
    assert reads > 1


async def test_the_lines_are_the_ones_the_life_should_give(database):
    watcher = StoreWatcher(database, lambda: [])
    watcher._last_event = 0
    got = lean(watcher)
    watcher._close()
    ids = {r[0]: r[1] for r in sqlite3.connect(database).execute("SELECT id, b24_id FROM message")}
    finals = {ids[f["id"]]: (f["status"], f["smsc_ids"]) for f in got["finals"]}
    assert finals == {"plain": ("delivered", ["P1"]), "early": ("undelivered", ["E1"]),
                      "multi": ("undelivered", ["M0", "M1", "M2"]), "first": ("delivered", ["F1"]),
                      "repeat": ("delivered", []), "back": ("delivered", ["B1"]), "invalid": ("failed", [])}
    assert [(ids[i["id"]], i["status"], i["detail"]) for i in got["ignored"]] == [
        ("early", "accepted", "ENROUTE"), ("back", "undelivered", "UNDELIV"), ("back", "accepted", "ENROUTE"),
        ("back", "accepted", None)]
    assert got["latencies"] and all(seconds >= 0 for _, _, seconds in got["latencies"])
