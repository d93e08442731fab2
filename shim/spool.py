"""The shim's durable spool: the only state the shim keeps.

Why it exists: Bitrix24 marks a message "sent" when it queues the HANDLER
call, never reads our answer and never retries (reference/bitrix24.md §2).
A post the shim cannot hand to the daemon (restarting, crashed, stopped,
disk full) would be an SMS that silently never leaves.  So when the daemon
does not commit a post in time, the shim appends the post here, fsyncs, and
only then answers 200; a task forwards spooled posts, oldest first, as soon
as the daemon answers again.  The daemon's intake is idempotent on
(member_id, b24_id), so a post both spooled and (late) stored by the
daemon is stored once: the replay is answered as a duplicate.

On the normal path (the daemon answers in time) nothing here runs: no write,
no fsync.

Layout: append-only segment files ``<seq>.spool`` in one directory, which a
``lock`` file (flock) keeps to one shim: several shims each get their own.
Each record is::

    length  u32 big-endian   bytes of payload
    crc32   u32 big-endian   zlib.crc32 of payload
    payload                  spooled_at (f64 big-endian, unix time) + the intake params JSON

Concurrent appends are written with one ``write`` and one ``fsync`` (group
commit), in a worker thread so the event loop keeps serving.  A failed write
is cut back off the file (nothing half-written stays) and those posts get a
503, as do posts that would take the spool over its size cap.  At start a
torn last record (a crash mid-write) is detected by its length or checksum,
cut off, and reported in one log line.  Fully replayed segments are removed;
when the spool drains, the last one is truncated to nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

from smppd.ops import metrics

__all__ = ["Spool", "SpoolBroken", "SpoolError", "SpoolFull", "Replayed", "encode_record", "spooled_params"]

log = structlog.get_logger(__name__)

_HEADER = struct.Struct(">II")
_STAMP = struct.Struct(">d")
SEGMENT_BYTES = 8 * 1024 * 1024
"""A new segment file starts past this size, so replayed posts free disk as
the drain goes instead of only when the whole spool is empty."""
REPLAY_BATCH = 256
"""Posts sent to the daemon per replay round: one ``intake.batch`` line."""
READ_BYTES = 1024 * 1024
"""Bytes read from a segment per replay round (a round needs ~256 posts)."""
RETRY_MIN, RETRY_MAX = 0.1, 2.0
"""Seconds between replay attempts while the daemon does not answer."""


class SpoolError(Exception):
    """The spool cannot take this post: the caller answers 503."""


class SpoolFull(SpoolError):
    """The post would take the spool over its size cap."""


class SpoolBroken(SpoolError):
    """Writing or syncing the spool failed (disk error, disk full)."""


Replayed = Callable[[list[bytes]], Awaitable[list[bool]]]
"""Sends spooled intake params to the daemon, in order; per post True when
the daemon is done with it (stored, duplicate, or refused as invalid: a
refusal would not change on a retry), False to try it again later."""


def encode_record(params: bytes, spooled_at: float) -> bytes:
    payload = _STAMP.pack(spooled_at) + params
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


@dataclass
class _Segment:
    seq: int
    path: str
    end: int  # bytes of whole, synced records
    fd: int = -1  # open for appending: the last segment only

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _scan(path: str) -> tuple[int, int, float | None, str | None]:
    """(end of the last whole record, records, first record's spooled_at,
    what is wrong past the end or None) of a segment file."""
    with open(path, "rb") as f:
        data = f.read()
    offset = count = 0
    first: float | None = None
    while offset < len(data):
        if len(data) - offset < _HEADER.size:
            return offset, count, first, "short header"
        length, crc = _HEADER.unpack_from(data, offset)
        payload = data[offset + _HEADER.size:offset + _HEADER.size + length]
        if len(payload) < length or length < _STAMP.size:
            return offset, count, first, "short record"
        if zlib.crc32(payload) != crc:
            return offset, count, first, "checksum mismatch"
        if first is None:
            first = _STAMP.unpack_from(payload)[0]
        offset += _HEADER.size + length
        count += 1
    return offset, count, first, None


class Spool:
    """One shim's spool directory.  ``open()`` before use, ``close()`` after."""

    def __init__(self, directory: str, *, max_bytes: int, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._segments: list[_Segment] = []
        self._lock_fd = -1
        self._bytes = 0
        self._records = 0  # whole records not yet replayed
        self._cursor = 0  # read offset into self._segments[0]
        self._oldest: float | None = None  # spooled_at of the next post to replay
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._flusher: asyncio.Task[None] | None = None
        self._io = asyncio.Lock()
        self._wake = asyncio.Event()
        self._spooling_since: float | None = None
        self._spooled_in_episode = 0

    # --- state ---------------------------------------------------------------------

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def records(self) -> int:
        return self._records

    def oldest_age(self, now: float | None = None) -> float:
        """Seconds the oldest spooled post has waited; 0 when empty."""
        if self._oldest is None or self._records == 0:
            return 0.0
        return max(0.0, (time.time() if now is None else now) - self._oldest)

    # --- open / close --------------------------------------------------------------

    def open(self) -> None:
        """Take the directory (one shim per spool), check every record,
        cut a torn tail off, and open the last segment for appending."""
        try:
            self._open()
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc}") from exc

    def _open(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolError(f"spool directory {self.directory} is in use by another shim; "
                             "give each shim its own shim.spool_dir") from None
        names = sorted((n for n in os.listdir(self.directory) if n.endswith(".spool") and n[:-6].isdigit()),
                       key=lambda n: int(n[:-6]))
        for name in names:
            path = os.path.join(self.directory, name)
            end, count, first, problem = _scan(path)
            if problem is not None:
                size = os.path.getsize(path)
                log.warning("spool.torn_record_skipped", segment=name, offset=end, bytes=size - end, problem=problem)
                os.truncate(path, end)
            if count == 0:
                os.unlink(path)
                continue
            if self._oldest is None:
                self._oldest = first
            self._segments.append(_Segment(int(name[:-6]), path, end))
            self._bytes += end
            self._records += count
        if not self._segments:
            self._new_segment(1)
        else:
            last = self._segments[-1]
            last.fd = os.open(last.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        metrics.shim_spool_state(self._bytes, self.max_bytes, self.oldest_age)
        if self._records:
            log.warning("spool.replaying", posts=self._records, bytes=self._bytes)
            self._spooling_since = time.monotonic()
            self._wake.set()

    def _new_segment(self, seq: int) -> _Segment:
        path = os.path.join(self.directory, f"{seq:012d}.spool")
        seg = _Segment(seq, path, 0, os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600))
        try:
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
            try:
                os.fsync(dir_fd)  # the new name survives a crash with the records in it
            finally:
                os.close(dir_fd)
        except OSError:
            seg.close()
            raise
        self._segments.append(seg)
        return seg

    async def close(self) -> None:
        """Finish the appends under way, then release the files; what was not
        replayed stays for the next start."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        for seg in self._segments:
            seg.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- append (group commit) -----------------------------------------------------

    async def append(self, params: bytes) -> None:
        """Keep ``params`` (one post's intake call) until the daemon has it:
        returns once it is on disk (fsynced); raises ``SpoolFull`` or
        ``SpoolBroken`` when it is not, and then nothing of it was kept."""
        record = encode_record(params, time.time())
        if self._bytes + self._pending_bytes + len(record) > self.max_bytes:
            metrics.shim_spool_refused("full")
            raise SpoolFull(f"spool at its cap of {self.max_bytes} bytes")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((record, future))
        self._pending_bytes += len(record)
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush(), name="spool-flush")
        await future

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                data = b"".join(record for record, _ in batch)
                self._pending_bytes -= len(data)
                async with self._io:
                    seg = self._segments[-1]
                    try:
                        if seg.end >= self._segment_bytes:
                            old, seg = seg, self._new_segment(seg.seq + 1)
                            old.close()
                        await loop.run_in_executor(None, _write_synced, seg.fd, seg.end, data)
                    except Exception as exc:  # OSError: the disk; anything else must not hang the posts
                        log.error("spool.write_failed", error=str(exc), posts=len(batch))
                        metrics.shim_spool_refused("disk")
                        for _, future in batch:
                            if not future.done():
                                future.set_exception(SpoolBroken(str(exc)))
                        continue
                    seg.end += len(data)
                    self._bytes += len(data)
                    if self._records == 0:
                        self._oldest = _STAMP.unpack_from(data, _HEADER.size)[0]
                    self._records += len(batch)
                if self._spooling_since is None:
                    self._spooling_since = time.monotonic()
                    self._spooled_in_episode = 0
                    log.warning("spool.started", hint="the daemon did not answer in time; posts are kept on disk")
                self._spooled_in_episode += len(batch)
                metrics.shim_spooled(len(batch), self._bytes)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)
                self._wake.set()
        finally:
            self._flusher = None

    # --- replay --------------------------------------------------------------------

    def _read(self, limit: int) -> list[tuple[int, float, bytes]]:
        """Up to ``limit`` records from the cursor on, in the first segment:
        (offset after the record, relative to the cursor; spooled_at; params)."""
        seg = self._segments[0]
        if seg.end <= self._cursor:
            return []
        with open(seg.path, "rb") as f:
            f.seek(self._cursor)
            data = f.read(min(seg.end - self._cursor, READ_BYTES))
            if len(data) >= _HEADER.size:  # a first record longer than READ_BYTES is read whole
                need = _HEADER.size + _HEADER.unpack_from(data)[0]
                if need > len(data):
                    data += f.read(min(need, seg.end - self._cursor) - len(data))
        out: list[tuple[int, float, bytes]] = []
        offset = 0
        while offset + _HEADER.size <= len(data) and len(out) < limit:
            length, crc = _HEADER.unpack_from(data, offset)
            if offset + _HEADER.size + length > len(data) and out and self._cursor + len(data) < seg.end:
                break  # the rest of this record is past the chunk read: the next read starts with it
            payload = data[offset + _HEADER.size:offset + _HEADER.size + length]
            if len(payload) < max(length, _STAMP.size) or zlib.crc32(payload) != crc:
                if out:  # hand over what came before; the next read starts at the bad record
                    break
                # the disk changed it under us: the rest of this file is not trusted
                log.error("spool.corrupt_record_skipped", segment=os.path.basename(seg.path),
                          offset=self._cursor + offset, bytes=len(data) - offset)
                self._cursor = seg.end
                return []
            offset += _HEADER.size + length
            out.append((offset, _STAMP.unpack_from(payload)[0], payload[_STAMP.size:]))
        return out

    async def replay(self, send: Replayed) -> None:
        """Forward spooled posts to the daemon, oldest first, until cancelled."""
        delay = RETRY_MIN
        while True:
            await self._wake.wait()
            batch = self._next_batch()
            if not batch:
                self._wake.clear()
                await self._drained()
                continue
            done = await send([params for _, _, params in batch])
            acked = 0
            while acked < len(batch) and done[acked]:
                acked += 1
            if acked:
                self._cursor += batch[acked - 1][0]
                self._records = max(0, self._records - acked)
                # the next record's stamp, or the last one taken until the next read says
                self._oldest = batch[min(acked, len(batch) - 1)][1] if self._records else None
                metrics.shim_replayed(acked, self._bytes)
            if acked < len(batch):
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
            else:
                delay = RETRY_MIN

    def _next_batch(self) -> list[tuple[int, float, bytes]]:
        while True:
            batch = self._read(REPLAY_BATCH)
            if batch:
                self._oldest = batch[0][1]
                return batch
            if len(self._segments) == 1:
                return batch
            # the first segment is done with and a newer one exists
            old = self._segments.pop(0)
            old.close()
            os.unlink(old.path)
            self._bytes -= old.end
            self._cursor = 0
            metrics.shim_spooled(0, self._bytes)

    async def _drained(self) -> None:
        """Everything replayed: give the disk back and say so once."""
        async with self._io:
            seg = self._segments[0]
            if self._pending or len(self._segments) != 1 or self._cursor < seg.end:
                return  # an append is under way; its flush wakes us again
            if seg.end:
                os.ftruncate(seg.fd, 0)
                self._bytes -= seg.end
                seg.end = 0
            self._cursor = 0
            self._records = 0
            self._oldest = None
        metrics.shim_spooled(0, self._bytes)
        if self._spooling_since is not None:
            log.warning("spool.drained", posts=self._spooled_in_episode,
                        seconds=round(time.monotonic() - self._spooling_since, 1))
            self._spooling_since = None


def _write_synced(fd: int, end: int, data: bytes) -> None:
    """Append ``data`` and fsync; on failure cut the file back to ``end`` so
    no half record stays behind."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError:
        try:
            os.ftruncate(fd, end)
        except OSError:
            pass
        raise


def spooled_params(params: bytes) -> bytes:
    """A spooled post's ``intake`` params as today's daemon takes them.

    A spool written before issue 15.2 named Bitrix24's id ``message_id``, as the form does;
    the daemon now takes ``b24_id`` and would refuse such a line as a bad request, which the
    replay counts as done with: the post would be lost. A JSON key cannot hide inside a
    string value (its quotes would be escaped there), so the byte test is exact and a
    current line costs no parse."""
    if b'"b24_id":' in params or b'"message_id":' not in params:
        return params
    try:
        old = json.loads(params)
    except ValueError:
        return params  # not ours to mend: the daemon's refusal names what is wrong
    if not isinstance(old, dict) or "b24_id" in old:
        return params
    renamed = {("b24_id" if key == "message_id" else key): value for key, value in old.items()}
    return json.dumps(renamed, ensure_ascii=False, separators=(",", ":")).encode()
