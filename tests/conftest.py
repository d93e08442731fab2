"""What every test module shares: the store fixture, and the rule that keeps the unit suite a unit suite.

``pytest -m "not integration"`` is meant to run in seconds without a port, a socket
file or a child process. A test that opens a socket or starts a process is marked
``@pytest.mark.integration`` (a module that only holds such tests sets
``pytestmark = pytest.mark.integration``). The hooks below make the mark honest: while
an unmarked test (its fixtures included) runs, binding or connecting a socket and
starting a process raise ``UnmarkedIntegration``, and the test fails even where the
code under test swallowed the error.
"""

from __future__ import annotations

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


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """Where the ``store`` fixture keeps its database; override it in a module to move it."""
    return tmp_path / "t.db"


@pytest.fixture
def store_clock() -> Callable[[], float]:
    """The ``store`` fixture's wall clock; a module overrides this fixture to move time by hand."""
    return time.time


@pytest.fixture
async def make_store(store_path: Path) -> AsyncIterator[MakeStore]:
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
async def store(make_store: MakeStore, store_path: Path, store_clock: Callable[[], float]) -> Store:
    """An opened store at ``store_path`` on ``store_clock``: the one store fixture of the suite."""
    return await make_store(store_path, clock=store_clock)


__all__ = ["MakeStore", "UnmarkedIntegration", "refusing_sockets_and_processes"]
