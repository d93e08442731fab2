"""The rule in conftest.py that keeps ``pytest -m "not integration"`` free of sockets and processes.

These tests run unmarked, so the suite's own guard is around them too: should the
inner guard let a call through, the outer one fails the test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading

import pytest

from tests.conftest import UnmarkedIntegration, refusing_sockets_and_processes


def test_binding_or_connecting_a_socket_is_refused_and_noted(tmp_path) -> None:
    caught: list[str] = []
    with refusing_sockets_and_processes(caught):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            with pytest.raises(UnmarkedIntegration):
                tcp.bind(("127.0.0.1", 0))
            with pytest.raises(UnmarkedIntegration):
                tcp.connect_ex(("127.0.0.1", 9))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
            with pytest.raises(UnmarkedIntegration):
                unix.connect(str(tmp_path / "none.sock"))
    assert caught == ["socket.bind", "socket.connect_ex", "socket.connect"]


async def test_an_asyncio_server_or_connection_is_refused() -> None:
    caught: list[str] = []
    with refusing_sockets_and_processes(caught):
        with pytest.raises(UnmarkedIntegration):
            await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        with pytest.raises(UnmarkedIntegration):
            await asyncio.open_connection("127.0.0.1", 9)
    assert "socket.bind" in caught and "socket.connect" in caught


async def test_starting_a_process_is_refused() -> None:
    caught: list[str] = []
    with refusing_sockets_and_processes(caught):
        with pytest.raises(UnmarkedIntegration):
            subprocess.run([sys.executable, "-c", "pass"], check=False)
        with pytest.raises(UnmarkedIntegration):
            await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
        with pytest.raises(UnmarkedIntegration):
            os.system("true")
    assert caught.count("Popen.__init__") == 2 and "os.system" in caught


def test_a_thread_the_test_starts_is_refused_too() -> None:
    caught: list[str] = []
    raised: list[BaseException] = []

    def connect() -> None:
        with socket.socket() as s:
            try:
                s.connect(("127.0.0.1", 9))
            except BaseException as e:  # noqa: BLE001 -- handed back to the test
                raised.append(e)

    with refusing_sockets_and_processes(caught):
        t = threading.Thread(target=connect)
        t.start()
        t.join()
    assert caught == ["socket.connect"] and isinstance(raised[0], UnmarkedIntegration)


def test_everything_is_put_back_afterwards() -> None:
    before = {name: vars(socket.socket).get(name) for name in ("bind", "connect", "connect_ex")}
    popen_init, fork = subprocess.Popen.__init__, os.fork
    with refusing_sockets_and_processes([]):
        assert subprocess.Popen.__init__ is not popen_init
    assert {name: vars(socket.socket).get(name) for name in before} == before
    assert (subprocess.Popen.__init__, os.fork) == (popen_init, fork)
    # socketpair() stays allowed: asyncio's own loop needs one
    a, b = socket.socketpair()
    a.close()
    b.close()
