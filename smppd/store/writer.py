"""The one writer: one thread, one connection, group commit, and what happens when the storage fails.

Every read and write is an *operation*: a plain function over a DB-API connection
(SQLite's or PostgreSQL's, ``engine``). Operations queue up in arrival order; the
writer task runs whatever has queued as one transaction in the writer's own thread
(a one-thread executor: the connection is only ever used there), commits once, and
only then resolves the callers' futures. That gives the three properties the rest of
the daemon relies on:

* **durable before ack**: ``intake`` returns after COMMIT (SQLite: synchronous=FULL;
  PostgreSQL: synchronous_commit on), so the shim's 200 means the row is on disk;
* **one order**: a receipt's lookup runs after the ``segment_accepted`` that was
  queued before it, so there are no read-your-write races between tasks;
* **cheap under load**: a thousand intakes cost one commit and one thread hop,
  not a thousand.

The thread is ours rather than aiosqlite's: aiosqlite's documented API runs one call
per hop and commits on its own terms; running a whole group as one function in its
thread took its private ``_execute``.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

import structlog

from .database import engine_for
from .engine import Connection, Engine, storage_error
from .schema import migrate

log = structlog.get_logger(__name__)

T = TypeVar("T")
Operation = Callable[[Connection], T]

MAX_GROUP = 2000
# A full disk (issue 19 item 3): how often the writer tries again the writes it holds, and
# how many receipts (SMPP deliver_sm, HTTP callbacks) may wait in memory for the disk
# before the next one is refused (the provider delivers it again later).
UNAVAILABLE_RETRY = 1.0
MAX_HELD_RECEIPTS = 10_000
# Free bytes under the database before new posts are taken again after a full disk.
RESUME_FREE_BYTES = 1 << 20


class StoreClosed(RuntimeError):
    pass


class StoreUnavailable(RuntimeError):
    """The store cannot write now (the disk is full, an I/O error, a read-only remount; on
    PostgreSQL also a lost connection, a server restarting, a standby after a failover).

    Only the writes that have somewhere else to wait are refused with it: a new post
    (the shim answers 503, its spool keeps the post) and a receipt beyond the held bound
    (the provider delivers it again). Everything else waits in memory until it is written.
    """


# What ``Store.execute`` does with an operation while the store cannot write.
HOLD = 0  # wait in memory, written when space returns (the daemon's own work: bounded by it)
REFUSE = 1  # StoreUnavailable at once: the caller has a place to wait (the shim's spool)
HOLD_BOUNDED = 2  # held up to ``max_held_receipts`` at once, then StoreUnavailable (receipts)


class StoreOpenError(RuntimeError):
    """The database cannot be opened for writing at start (a read-only mount, a directory
    the daemon may not write, a PostgreSQL that refuses us): one line naming the database
    and the problem, never a traceback, and never a start that hangs (issue 19 item 4)."""

    def __init__(self, path: str, problem: str, *, retry: bool = False) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.retry = retry  # a full disk, a server down: starting again later can work (exit 1, systemd restarts)


class _Queued(NamedTuple):
    op: Operation[Any]
    fut: asyncio.Future[Any]
    policy: int


class _NoFuture:
    """The probe's stand-in future: nobody waits for it."""

    @staticmethod
    def done() -> bool:
        return True


class Writer:
    """The one writer: every concern of the store (its other modules) adds its operations
    over this, and ``Store`` is all of them together."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.time,
                 max_held_receipts: int = MAX_HELD_RECEIPTS, retry_interval: float = UNAVAILABLE_RETRY) -> None:
        self.path = path  # [daemon] database: a SQLite path or a postgresql:// URL
        self.engine: Engine = engine_for(path)
        self.clock = clock
        self._conn: Connection | None = None
        self._connect_next = False
        self._thread: ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self.outbox_changed = asyncio.Event()  # set when an outbox row is added or changed
        # A full disk: why the store cannot write (None while it can), and how many receipts
        # wait in memory for a commit (bounded while it cannot).
        self.unavailable: str | None = None
        self.unavailable_since: float | None = None
        self.held_receipts = 0
        self.max_held_receipts = max_held_receipts
        self.refused = {"intake": 0, "receipts": 0}
        self._refused_before = dict(self.refused)
        self._retry_interval = retry_interval
        # While the store cannot write and nothing else is queued: a write that changes
        # nothing and commits only when writes go through again.
        self._probe = _Queued(self.engine.probe, _NoFuture(), HOLD)  # type: ignore[arg-type]

    # --- lifecycle -------------------------------------------------------------

    @property
    def writing(self) -> bool:
        """The writer task is alive: the store can still commit (the service's health check)."""
        return self._writer is not None and not self._writer.done()

    async def open(self) -> None:
        """Open (and migrate) the database; ``StoreOpenError`` when it cannot be written."""
        engine = self.engine
        problem = engine.open_problem()
        if problem is not None:
            raise StoreOpenError(engine.display, problem)
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        try:
            await self._run(lambda conn: migrate(conn, engine))  # the first hop connects
            # A read-only file opens and reads fine; the first write would fail much later.
            try:
                await self._run(_probe_write(engine))
            except Exception as e:
                if not engine.storage_error(e) or engine.open_problem() is not None:
                    raise
                # A full disk at start: start anyway (reads work, posts get 503, writes wait).
                # Exiting would only loop through systemd's restarts until space returns.
                self._became_unavailable(e)
        except Exception as e:
            await self._close_connection()
            if isinstance(e, StoreOpenError):
                raise
            problem, retry = engine.open_error(e)
            raise StoreOpenError(engine.display, problem, retry=retry) from None
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    def _connect(self) -> None:
        """In the writer's thread: (re)open its connection."""
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # a connection already lost: nothing to close cleanly
                pass
            self._conn = None
        self._conn = self.engine.connect()

    async def close(self) -> None:
        if self._writer is not None:
            await self._queue.put(None)
            await self._writer
            self._writer = None
        await self._close_connection()

    async def _close_connection(self) -> None:
        """Close the connection in its thread, then let the thread end (it would keep the
        process alive: the hang at start that a failed open once caused)."""
        if self._thread is None:
            return
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                await asyncio.get_running_loop().run_in_executor(self._thread, conn.close)
            except Exception:
                pass
        self._thread.shutdown(wait=False)
        self._thread = None

    async def _run(self, op: Callable[[Connection], T]) -> T:
        """Run a function of the connection in the writer's thread: one hop for a whole group.

        A connection the engine calls broken (PostgreSQL: lost, or it saw a storage
        error such as a standby's read-only refusal) is opened again first, so a held
        group is retried on a fresh connection, which may reach the new primary.
        """
        assert self._thread is not None

        def call() -> T:
            if self._conn is None or self._connect_next or self.engine.broken(self._conn):
                self._connect_next = False
                self._connect()
            assert self._conn is not None
            try:
                return op(self._conn)
            except Exception as e:
                # PostgreSQL: a storage error (a standby's read-only refusal, a server going away)
                # means the next try opens a new connection, which may reach the new primary.
                if self.engine.reconnect_after_storage_error and self.engine.storage_error(e):
                    self._connect_next = True
                raise

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def _write_loop(self) -> None:
        """Group, run, commit, resolve; on a full disk hold the group and try it again.

        A group that fails for want of space resolves nobody: its operations (minus
        the refusable ones) stay in order at the front and are run again, with what
        queued meanwhile, every ``retry_interval`` seconds until a commit goes through.
        Reads, and writes that still fit, commit meanwhile. Posts resume once a group
        commits with ``RESUME_FREE_BYTES`` free (a commit alone proves little: a group of
        reads, or a write into the WAL's last pages, commits on a full disk); when nothing
        is queued a probe write is made every ``retry_interval``, so they resume by themselves.
        """
        held: list[_Queued] = []
        stop = False
        while not stop:
            if self.unavailable is None:
                first = await self._queue.get()
                if first is None:
                    break
                group = [first]
            else:
                group, held = held, []
                if group:
                    await asyncio.sleep(self._retry_interval)
                else:
                    try:
                        first = await asyncio.wait_for(self._queue.get(), self._retry_interval)
                    except TimeoutError:
                        first = self._probe  # nothing to write: probe anyway, or posts would never resume
                    if first is None:
                        break
                    group = [first]
            while len(group) < MAX_GROUP and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                group.append(item)
            if self.unavailable is not None:
                group = self._shed(group)
            try:
                results = await self._run(lambda conn: run_group(conn, [q.op for q in group]))
            except Exception as e:  # the commit itself failed: nobody's write is durable
                if self.engine.storage_error(e):
                    self._became_unavailable(e)
                    held = [q for q in self._shed(group) if q is not self._probe]
                    if stop:  # closing: nothing more can be written
                        self._fail(held, StoreUnavailable(self.unavailable or str(e)))
                    continue
                log.error("store_commit_failed", error=str(e), ops=len(group))
                self._fail(group, e)
                continue
            if self.unavailable is not None and self._space_returned():
                self._resumed()
            for q, (ok, value) in zip(group, results):
                if q.fut.done():
                    continue
                if ok:
                    q.fut.set_result(value)
                else:
                    q.fut.set_exception(value)
        if held:
            self._fail(held, StoreUnavailable(self.unavailable or "the store closed"))

    def _space_returned(self) -> bool:
        """A retry committed; posts resume only with ``RESUME_FREE_BYTES`` free, or the last
        pages of the WAL would let a few in and the next commit fail again (flapping).
        PostgreSQL's disk is the server's to watch: a commit there is the signal."""
        free = self.engine.free_bytes()
        return free is None or free >= RESUME_FREE_BYTES

    def _shed(self, group: list[_Queued]) -> list[_Queued]:
        """The operations that wait for the disk; refusable ones get StoreUnavailable now."""
        kept = []
        for q in group:
            if q.policy == REFUSE:
                if not q.fut.done():
                    self.refused["intake"] += 1
                    q.fut.set_exception(StoreUnavailable(self.unavailable or "the store cannot write"))
            else:
                kept.append(q)
        return kept

    @staticmethod
    def _fail(group: list[_Queued], e: BaseException) -> None:
        for q in group:
            if not q.fut.done():
                q.fut.set_exception(e)

    def _became_unavailable(self, e: BaseException) -> None:
        if self.unavailable is not None:
            return
        self._refused_before = dict(self.refused)
        self.unavailable = self.engine.problem(e)
        self.unavailable_since = self.clock()
        # Once, not per refused post: the line says why and what happens meanwhile.
        log.error("store_unavailable", path=self.engine.display, problem=self.unavailable,
                  hint="new posts are refused (503), receipts wait in memory; writes resume by themselves"
                       " when space returns")

    def _resumed(self) -> None:
        since = self.unavailable_since or self.clock()
        before = self._refused_before
        log.warning("store_resumed", path=self.engine.display, after_seconds=round(self.clock() - since, 1),
                    refused_posts=self.refused["intake"] - before.get("intake", 0),
                    refused_receipts=self.refused["receipts"] - before.get("receipts", 0))
        self.unavailable = None
        self.unavailable_since = None

    def execute(self, op: Operation[T], policy: int = HOLD) -> asyncio.Future[T]:
        """Queue an operation; the future resolves after its group commits.

        An operation is a function of the database only (no side effects outside
        it): when another operation of its group fails, the group is rolled back
        and run again (``run_group``), so it may run twice. ``policy`` says what
        happens to it while the disk is full (``HOLD``, ``REFUSE``, ``HOLD_BOUNDED``).
        """
        if self._writer is None:
            raise StoreClosed("store is not open")
        if self.unavailable is not None and policy != HOLD:
            if policy == REFUSE:
                self.refused["intake"] += 1
                raise StoreUnavailable(self.unavailable)
            if self.held_receipts >= self.max_held_receipts:
                self.refused["receipts"] += 1
                raise StoreUnavailable(f"{self.unavailable}; {self.held_receipts} receipts already held")
        fut: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if policy == HOLD_BOUNDED:
            self.held_receipts += 1
            fut.add_done_callback(self._receipt_done)
        self._queue.put_nowait(_Queued(op, fut, policy))
        return fut

    def _receipt_done(self, fut: asyncio.Future[Any]) -> None:
        self.held_receipts -= 1

    @contextmanager
    def receipt_slot(self) -> Iterator[None]:
        """A receipt stored through operations that do not know they carry one (an HTTP
        callback runs the route's own code): it counts against ``max_held_receipts`` while
        it waits, and beyond the bound it is refused (StoreUnavailable) before any work."""
        if self.unavailable is not None and self.held_receipts >= self.max_held_receipts:
            self.refused["receipts"] += 1
            raise StoreUnavailable(f"{self.unavailable}; {self.held_receipts} receipts already held")
        self.held_receipts += 1
        try:
            yield
        finally:
            self.held_receipts -= 1

    def noting_outbox(self, fut: asyncio.Future[tuple[T, bool]]) -> asyncio.Future[T]:
        """The result of an operation that returns (result, outbox changed); the pushers are
        woken when it changed. For the callers that take an operation's future, not a coroutine."""
        out: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(f: asyncio.Future[tuple[T, bool]]) -> None:
            if out.cancelled():
                return
            if f.cancelled():
                out.cancel()
            elif f.exception() is not None:
                out.set_exception(f.exception())  # type: ignore[arg-type]
            else:
                result, changed = f.result()
                if changed:
                    self.outbox_changed.set()
                out.set_result(result)

        fut.add_done_callback(done)
        return out


def _probe_write(engine: Engine) -> Callable[[Connection], None]:
    """A write that changes nothing, committed: fails now if the database cannot be written."""

    def probe(conn: Connection) -> None:
        with _transaction(conn):
            engine.probe(conn)

    return probe


def run_group(conn: Connection, ops: list[Operation[Any]]) -> list[tuple[bool, Any]]:
    """Run ops in one transaction, committed once; a failing op rolls back only its own writes.

    Optimistic: the ops run back to back without a savepoint each (SAVEPOINT and
    RELEASE are two statements per op, a sixth of the writer's statements). An op
    that raises is rare (a constraint, a bug); then the whole transaction rolls
    back and the group runs again with a savepoint around each op. Ops are plain
    functions of the database (see ``Store.execute``), so running one again
    after the rollback gives what the first run would have.
    """
    results: list[tuple[bool, Any]] | None = None
    try:
        with _transaction(conn):
            with _pipelined(conn):
                ran = [(True, op(conn)) for op in ops]
            results = ran  # after the pipeline's sync: an op's deferred error was raised above
    except Exception as e:
        # The ops ran and the COMMIT failed, or the storage failed: nobody's write is durable.
        if results is not None or storage_error(e):
            raise
        return _run_group_isolated(conn, ops)
    return results


def _pipelined(conn: Connection) -> Any:
    """PostgreSQL: the group's statements in pipeline mode (a write whose result nobody reads
    goes out with the next statement instead of waiting for its own round trip; a read
    syncs). SQLite: nothing to save, no pipeline."""
    pipelined = getattr(conn, "pipelined", None)
    return pipelined() if pipelined is not None else nullcontext()


def _run_group_isolated(conn: Connection, ops: list[Operation[Any]]) -> list[tuple[bool, Any]]:
    """The slow path of ``run_group``: a savepoint per op, so one failure spares the rest."""
    results: list[tuple[bool, Any]] = []
    with _transaction(conn):
        for op in ops:
            conn.execute("SAVEPOINT op")
            try:
                results.append((True, op(conn)))
                conn.execute("RELEASE op")
            except Exception as e:
                if storage_error(e):  # nobody's write can be kept: the whole group waits
                    raise
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                results.append((False, e))
    return results


@contextmanager
def _transaction(conn: Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT (PostgreSQL: BEGIN); anything that escapes (an op, the COMMIT, a cancel) rolls back."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise

