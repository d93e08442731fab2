"""What every test module shares: the store fixture, and the rule that keeps the unit suite a unit suite.

``pytest -m "not integration"`` is meant to run in seconds without a port, a socket
file or a child process. A test that opens a socket or starts a process is marked
``@pytest.mark.integration`` (a module that only holds such tests sets
``pytestmark = pytest.mark.integration``). The hooks below make the mark honest: while
an unmarked test (its fixtures included) runs, binding or connecting a socket and
starting a process raise ``UnmarkedIntegration``, and the test fails even where the
code under test swallowed the error.

``SMPPD_LEAK_CAPTURE=DIR`` (set by tests/ops/test_log_leaks.py for a pytest run of its own) sends
every log line of the run, ours and the libraries', through the production set-up
(``logs.configure``: JSON, redaction, library routing) into ``DIR/log.jsonl``, and writes
``DIR/witness.json``: every handler key, portal secret, number and text the run's simulated
portals and rigs used, so the caller can look for them in the lines.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pytest

from smppd.store import Store

# ------------------------------------------------------------------ the integration rule

# What opens a socket or starts a process. socketpair() is left alone: asyncio's event
# loop makes one for itself, and it reaches nothing outside the test process.
_GUARDED: tuple[tuple[Any, str], ...] = (
    (socket.socket, "bind"),
    (socket.socket, "connect"),
    (socket.socket, "connect_ex"),
    (subprocess.Popen, "__init__"),  # subprocess.run and asyncio.create_subprocess_* come here
    (os, "fork"),
    (os, "posix_spawn"),
    (os, "posix_spawnp"),
    (os, "system"),
)


class UnmarkedIntegration(RuntimeError):
    """A test without the integration mark tried to open a socket or start a process."""


@contextmanager
def refusing_sockets_and_processes(caught: list[str]) -> Iterator[None]:
    """Refuse every call in ``_GUARDED`` made by this test, noting each in ``caught``.

    Threads that were already running when the test began (left by an earlier
    integration test, or a module-scoped fixture) are let through: their calls are not
    this test's doing, and refusing them would make the rule flaky.
    """
    earlier = set(threading.enumerate())
    main = threading.main_thread()
    restore: list[tuple[Any, str, Any, bool]] = []

    def refuse(owner: Any, name: str, original: Any) -> Callable[..., Any]:
        what = f"{getattr(owner, '__name__', owner)}.{name}"

        def refused(*args: Any, **kwargs: Any) -> Any:
            me = threading.current_thread()
            if me is main or me not in earlier:
                caught.append(what)
                raise UnmarkedIntegration(f"{what} in a test not marked integration")
            return original(*args, **kwargs)

        return refused

    for owner, name in _GUARDED:
        original = getattr(owner, name, None)
        if original is None:
            continue
        restore.append((owner, name, original, name in vars(owner)))
        setattr(owner, name, refuse(owner, name, original))
    try:
        yield
    finally:
        for owner, name, original, own in reversed(restore):
            if own:
                setattr(owner, name, original)
            else:
                delattr(owner, name)  # socket.socket inherits bind/connect from _socket.socket


def _guarded_phase(item: pytest.Item) -> Generator[None, Any, Any]:
    if item.get_closest_marker("integration") is not None:
        return (yield)
    caught: list[str] = []
    with refusing_sockets_and_processes(caught):
        try:
            result = yield
        except BaseException:
            if not caught:
                raise
            result = None
    if caught:
        pytest.fail(f"{item.nodeid} is not marked integration but called {', '.join(sorted(set(caught)))}: "
                    "mark it @pytest.mark.integration (see tests/conftest.py)", pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded_phase(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Generator[None, Any, Any]:
    return (yield from _guarded_phase(item))


# ------------------------------------------------------------------ the store


class MakeStore(Protocol):
    async def __call__(self, path: Path | str | None = None, **kwargs: Any) -> Store: ...


@pytest.fixture(scope="session")
def postgresql() -> Iterator[Any]:
    """A throwaway PostgreSQL cluster for the session (``smppd.sims.postgresql``), stopped at
    the end. Skipped where PostgreSQL is not installed; with SMPPD_REQUIRE_TOOLS=1 (CI) a
    missing PostgreSQL fails instead, so CI never passes on SQLite alone."""
    from smppd.sims.postgresql import Cluster, find_bindir

    bindir = find_bindir()
    if bindir is None:
        if os.environ.get("SMPPD_REQUIRE_TOOLS") == "1":
            pytest.fail("PostgreSQL is not installed (Debian: apt-get install postgresql); SMPPD_REQUIRE_TOOLS=1")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    cluster = Cluster(bindir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


# Every store test runs on both engines; the PostgreSQL runs talk to a server process, so
# they are integration tests (``-m "not integration"`` stays SQLite-only and quick).
ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Which database the store fixtures use: ``sqlite`` or ``postgresql``."""
    return str(request.param)


@pytest.fixture
def database(engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh database for ``engine``: a SQLite path, or a PostgreSQL URL with a schema of its own."""
    if engine == "sqlite":
        return str(tmp_path / "t.db")
    cluster = request.getfixturevalue("postgresql")
    schema = cluster.new_schema()
    request.addfinalizer(lambda: cluster.drop_schema(schema))
    return str(cluster.url(schema=schema))


@pytest.fixture
def store_path(engine: str, tmp_path: Path, database: str) -> Path | str:
    """Where the ``store`` fixture keeps its database (a Path for SQLite, a URL for PostgreSQL);
    override it in a module to move it (such a module then runs on SQLite only)."""
    return tmp_path / "t.db" if engine == "sqlite" else database


@pytest.fixture
def store_clock() -> Callable[[], float]:
    """The ``store`` fixture's wall clock; a module overrides this fixture to move time by hand."""
    return time.time


@pytest.fixture
async def make_store(store_path: Path | str) -> AsyncIterator[MakeStore]:
    """Open stores (``Store`` keyword arguments pass through); each is closed after the test.

    For a test that needs more than one store, or one on a path of its own.
    """
    opened: list[Store] = []

    async def make(path: Path | str | None = None, **kwargs: Any) -> Store:
        s = Store(str(path if path is not None else store_path), **kwargs)
        await s.open()
        opened.append(s)
        return s

    yield make
    for s in reversed(opened):
        await s.close()


@pytest.fixture
async def store(make_store: MakeStore, store_path: Path | str, store_clock: Callable[[], float]) -> Store:
    """An opened store at ``store_path`` on ``store_clock``: the one store fixture of the suite."""
    return await make_store(store_path, clock=store_clock)


__all__ = ["MakeStore", "UnmarkedIntegration", "refusing_sockets_and_processes"]

_CAPTURE = os.environ.get("SMPPD_LEAK_CAPTURE")
_witness: dict[str, set[str]] = {"secrets": set(), "numbers": set(), "texts": set()}


def _record_rigs() -> None:
    from smppd.cli import demo
    from smppd.sims.bitrix24 import SimulatedPortal

    create = SimulatedPortal.create_message

    def create_message(self: SimulatedPortal, code: str, to: str, text: str, **kw: Any) -> Any:
        _witness["numbers"].add(to)
        _witness["texts"].add(text)
        _witness["secrets"].update({self.access_token, self.refresh_token, self.application_token,
                                    self.client_secret})
        return create(self, code, to, text, **kw)

    SimulatedPortal.create_message = create_message  # type: ignore[method-assign]
    start_rig = demo.start_rig

    async def recorded_start_rig(*args: Any, **kw: Any) -> Any:
        rig = await start_rig(*args, **kw)
        _witness["secrets"].add(rig.config.shim.handler_key)
        return rig

    demo.start_rig = recorded_start_rig  # type: ignore[assignment]


def pytest_configure(config: Any) -> None:
    if not _CAPTURE:
        return
    from smppd.ops import logs

    out = open(Path(_CAPTURE) / "log.jsonl", "a", encoding="utf-8")  # noqa: SIM115 -- open for the run
    logs.configure(json=True, cache=False, file=out)
    _record_rigs()


def pytest_unconfigure(config: Any) -> None:
    if _CAPTURE:
        (Path(_CAPTURE) / "witness.json").write_text(json.dumps({k: sorted(v) for k, v in _witness.items()}))

