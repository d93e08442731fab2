"""The store on a full disk (issue 19 item 3), on a real small tmpfs.

What the daemon relies on: no write of its own fails (they wait), a post is refused
at once, receipts wait up to a bound, and an update Bitrix24 already took is marked
done once space returns, so it is never pushed again.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from smppd.model import Status
from smppd.store import HOLD_BOUNDED, Store, StoreOpenError, StoreUnavailable, storage_error

from tests.rigs.store_rig import fill, new


@pytest.fixture
def small_disk(tmp_path: Path):
    state = tmp_path / "state"
    state.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(state)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this sandbox refuses to mount a tmpfs: {r.stderr.strip()}")
    try:
        yield state
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.mark.integration
async def test_full_disk_holds_writes_refuses_posts_bounds_receipts_and_resumes(small_disk: Path):
    store = Store(str(small_disk / "t.db"), max_held_receipts=2, retry_interval=0.1)
    await store.open()
    try:
        first = await store.intake(new("a" * 32))
        await store.segment_accepted(first.id, 0, "P1")
        filler = fill(small_disk)
        # Writes until one does not fit (the WAL's last pages may take a few).
        posted = 0
        with pytest.raises(StoreUnavailable):
            for i in range(10_000):
                await store.intake(new(f"{i + 1:032x}", segments=3))
                posted += 1
        assert store.unavailable is not None and "disk is full" in store.unavailable
        # The daemon's own writes wait: they neither fail nor finish while it is full.
        moved = asyncio.ensure_future(store.segment_failed(first.id, 0, Status.FAILED, "x"))
        receipts = [store.apply_receipts("life", [(f"R{i}", Status.DELIVERED, "DELIVRD")]) for i in range(2)]
        with pytest.raises(StoreUnavailable):  # beyond max_held_receipts: the SMSC is told to try again
            store.apply_receipts("life", [("R9", Status.DELIVERED, "DELIVRD")])
        with pytest.raises(StoreUnavailable):  # a post: refused at once, the shim answers 503
            await store.intake(new("f" * 32))
        with pytest.raises(StoreUnavailable):
            with store.receipt_slot():  # an HTTP callback beyond the bound
                pass
        await asyncio.sleep(0.5)  # several retries
        assert not moved.done() and not any(r.done() for r in receipts)
        assert store.held_receipts == 2

        filler.unlink()
        await until(lambda: store.unavailable is None)
        await asyncio.wait_for(moved, 5)
        assert [await r for r in receipts] == [[False], [False]]  # kept pending: ids not known yet
        again = await store.intake(new("f" * 32))
        assert again.status is Status.QUEUED
        assert store.refused == {"intake": 2, "receipts": 2}
    finally:
        await store.close()
    rows = sqlite3.connect(small_disk / "t.db").execute("SELECT count(*) FROM receipt_pending").fetchone()[0]
    assert rows == 2


@pytest.mark.integration
async def test_an_update_bitrix24_took_is_done_after_the_disk_returns_not_pushed_again(small_disk: Path):
    store = Store(str(small_disk / "t.db"), retry_interval=0.1)
    await store.open()
    try:
        r = await store.intake(new("a" * 32, reason="invalid number: x"))  # failed at intake: an update owed
        items = await store.outbox_due("m1")
        assert [i.status for i in items] == ["failed"]
        filler = fill(small_disk)
        while store.unavailable is None:  # fill the WAL's last pages too
            try:
                await store.intake(new(os.urandom(16).hex(), segments=3))
            except StoreUnavailable:
                break
        done = asyncio.ensure_future(store.outbox_done(items))  # Bitrix24 said yes meanwhile
        await asyncio.sleep(0.3)
        assert not done.done()
        filler.unlink()
        await asyncio.wait_for(done, 5)
        assert await store.outbox_due("m1") == []
        assert r.status is Status.FAILED
    finally:
        await store.close()


def test_storage_errors_are_told_from_bad_operations():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (x INTEGER NOT NULL)")
    try:
        conn.execute("INSERT INTO t VALUES (NULL)")
    except sqlite3.Error as e:
        assert not storage_error(e)
    assert not storage_error(sqlite3.OperationalError("built in Python"))
    assert not storage_error(ValueError())
    assert HOLD_BOUNDED != 0


@pytest.mark.integration
async def test_a_full_disk_at_start_is_a_retryable_open_error_or_opens_unavailable(small_disk: Path):
    """After a clean stop SQLite removed the -wal and -shm files; WAL mode cannot recreate
    them on a full disk, so the store cannot open: StoreOpenError with retry (exit 1, systemd
    starts it again), not exit 2 (RestartPreventExitStatus would leave it down for good)."""
    path = str(small_disk / "t.db")
    store = Store(path, retry_interval=0.1)
    await store.open()
    await store.intake(new("a" * 32))
    await store.close()
    filler = fill(small_disk)
    store = Store(path, retry_interval=0.1)
    with pytest.raises(StoreOpenError) as e:
        await store.open()
    assert e.value.retry and "bytes free" in e.value.problem
    filler.unlink()
    await store.open()
    try:
        assert store.unavailable is None
        assert (await store.intake(new("b" * 32))).status is Status.QUEUED
    finally:
        await store.close()


@pytest.mark.integration
async def test_a_database_that_opens_on_a_full_disk_starts_unavailable_and_reads_work(small_disk: Path):
    """With its -wal and -shm still there (a crash, a kill -9), the database opens and reads;
    the start probe write fails: the daemon starts refusing posts instead of exiting."""
    path = str(small_disk / "t.db")
    holder = Store(path)
    await holder.open()
    await holder.intake(new("a" * 32))  # holder stays open: its -wal and -shm stay
    filler = fill(small_disk)
    store = Store(path, retry_interval=0.1)
    try:
        await store.open()
    except StoreOpenError as e:
        pytest.skip(f"this filesystem cannot open it either: {e}")
    try:
        if store.unavailable is None:  # the WAL still had room for the probe
            while store.unavailable is None:
                try:
                    await store.intake(new(os.urandom(16).hex(), segments=3))
                except StoreUnavailable:
                    break
        with pytest.raises(StoreUnavailable):
            await store.intake(new("b" * 32))
        counts = await asyncio.wait_for(store.counts(), 5)  # reads are not held behind the disk
        assert counts["messages"]["life"]["queued"] >= 1
        filler.unlink()
        await until(lambda: store.unavailable is None)
        assert (await store.intake(new("b" * 32))).status is Status.QUEUED
    finally:
        await store.close()
        await holder.close()
