"""sd_notify over a real Unix datagram socket, as systemd provides it."""

import asyncio
import os
import socket

import pytest

from smppd.ops import sdnotify


@pytest.fixture
def listener(tmp_path):
    path = str(tmp_path / "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.setblocking(False)
    yield path, s
    s.close()


def received(s: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(s.recv(4096).decode())
        except BlockingIOError:
            return out


@pytest.mark.integration
def test_ready_reaches_the_socket(listener):
    path, s = listener
    assert sdnotify.notify("READY=1\nSTATUS=serving", {"NOTIFY_SOCKET": path})
    assert received(s) == ["READY=1\nSTATUS=serving"]


@pytest.mark.integration
def test_abstract_namespace_socket():
    name = f"smppd-test-{os.getpid()}"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind("\0" + name)
    s.setblocking(False)
    try:
        assert sdnotify.notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert received(s) == ["STOPPING=1"]
    finally:
        s.close()


@pytest.mark.integration
def test_without_systemd_nothing_is_sent_and_nothing_raises(tmp_path):
    assert sdnotify.notify("READY=1", {}) is False
    # A socket that went away: logged, not raised.
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")}) is False


def test_watchdog_interval_is_half_of_watchdog_sec():
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert sdnotify.watchdog_interval({}) is None
    assert sdnotify.watchdog_interval({"WATCHDOG_USEC": "0"}) is None


@pytest.mark.integration
async def test_watchdog_pings_only_while_healthy(listener):
    path, s = listener
    env = {"NOTIFY_SOCKET": path}
    health = {"ok": True}
    task = asyncio.create_task(sdnotify.watchdog(0.01, lambda: health["ok"], env))
    await asyncio.sleep(0.05)
    pings = received(s)
    assert len(pings) >= 2 and set(pings) == {"WATCHDOG=1"}
    health["ok"] = False
    await asyncio.sleep(0.02)
    received(s)  # drop a ping that may have raced the switch
    await asyncio.sleep(0.05)
    assert received(s) == []
    task.cancel()
