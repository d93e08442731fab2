"""The shim's spool on its own: framing, torn tails, the cap, disk errors, group commit, replay."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import socket

import pytest
import structlog

from shim import spool as spool_mod
from shim.spool import Spool, SpoolBroken, SpoolError, SpoolFull, encode_record
from smppd.ops import listenfds
from smppd.ops import metrics


def params(i: int) -> bytes:
    return json.dumps({"b24_id": f"m{i}", "text": "привет"}, ensure_ascii=False).encode()


def segments(directory) -> list[str]:
    return sorted(n for n in os.listdir(directory) if n.endswith(".spool"))


async def collect(spool: Spool, n: int, *, fail_first: int = 0) -> list[bytes]:
    """Run the replay until ``n`` posts were taken; the first ``fail_first`` sends answer 'try again'."""
    got: list[bytes] = []
    calls = 0

    async def send(batch: list[bytes]) -> list[bool]:
        nonlocal calls
        calls += 1
        if calls <= fail_first:
            return [False] * len(batch)
        got.extend(batch)
        return [True] * len(batch)

    task = asyncio.create_task(spool.replay(send))
    try:
        async with asyncio.timeout(10):
            while len(got) < n or spool.bytes:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
    return got


async def test_posts_survive_a_restart_and_replay_in_order(tmp_path):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    await asyncio.gather(*(s.append(params(i)) for i in range(20)))
    assert s.records == 20 and s.bytes > 0 and s.oldest_age() >= 0
    await s.close()
    again = Spool(str(tmp_path), max_bytes=1 << 20)
    again.open()
    assert again.records == 20
    assert await collect(again, 20, fail_first=2) == [params(i) for i in range(20)]
    # drained: the disk is given back and the oldest age reads 0
    assert again.bytes == 0 and again.oldest_age() == 0
    assert [os.path.getsize(tmp_path / n) for n in segments(tmp_path)] == [0]
    await again.close()


async def test_a_torn_last_record_is_skipped_with_one_log_line(tmp_path):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    for i in range(3):
        await s.append(params(i))
    await s.close()
    (name,) = segments(tmp_path)
    whole = os.path.getsize(tmp_path / name)
    with open(tmp_path / name, "ab") as f:  # a crash in the middle of the fourth record
        f.write(encode_record(params(3), 0.0)[:-5])
    again = Spool(str(tmp_path), max_bytes=1 << 20)
    with structlog.testing.capture_logs() as logs:
        again.open()
    torn = [e for e in logs if e["event"] == "spool.torn_record_skipped"]
    assert len(torn) == 1 and torn[0]["offset"] == whole and torn[0]["problem"] == "short record"
    assert os.path.getsize(tmp_path / name) == whole and again.records == 3
    assert await collect(again, 3) == [params(i) for i in range(3)]
    await again.close()


async def test_a_bad_checksum_at_the_tail_is_cut_off(tmp_path):
    record = bytearray(encode_record(params(1), 1.0))
    record[-1] ^= 0xFF
    (tmp_path / "000000000001.spool").write_bytes(encode_record(params(0), 1.0) + bytes(record))
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    with structlog.testing.capture_logs() as logs:
        s.open()
    assert [e["problem"] for e in logs if e["event"] == "spool.torn_record_skipped"] == ["checksum mismatch"]
    assert await collect(s, 1) == [params(0)]
    await s.close()


async def test_a_full_spool_refuses_and_writes_nothing(tmp_path):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    s.max_bytes = 3 * len(encode_record(params(0), 0.0))
    for i in range(3):
        await s.append(params(i))
    size = s.bytes
    with pytest.raises(SpoolFull):
        await s.append(params(3))
    assert s.bytes == size == sum(os.path.getsize(tmp_path / n) for n in segments(tmp_path))
    assert s.records == 3
    await s.close()


async def test_a_disk_error_refuses_and_leaves_no_half_record(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    await s.append(params(0))
    size = s.bytes

    def broken_fsync(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_mod.os, "fsync", broken_fsync)
    with pytest.raises(SpoolBroken):
        await s.append(params(1))
    monkeypatch.undo()
    (name,) = segments(tmp_path)
    assert os.path.getsize(tmp_path / name) == size == s.bytes
    await s.append(params(2))  # the disk is back: the spool is too
    assert await collect(s, 2) == [params(0), params(2)]
    await s.close()


async def test_concurrent_appends_share_one_fsync(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    syncs = 0
    real = os.fsync

    def counting(fd: int) -> None:
        nonlocal syncs
        syncs += 1
        real(fd)

    monkeypatch.setattr(spool_mod.os, "fsync", counting)
    await asyncio.gather(*(s.append(params(i)) for i in range(200)))
    assert s.records == 200 and syncs <= 3  # group commit: the first alone, then the rest together
    await s.close()


async def test_segments_rotate_and_replayed_ones_are_removed(tmp_path):
    s = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=200)
    s.open()
    for i in range(10):
        await s.append(params(i))
    assert len(segments(tmp_path)) > 2
    assert await collect(s, 10) == [params(i) for i in range(10)]
    assert len(segments(tmp_path)) == 1 and s.bytes == 0
    await s.close()


async def test_replay_reads_in_chunks_that_cut_records(tmp_path, monkeypatch):
    monkeypatch.setattr(spool_mod, "READ_BYTES", 150)  # ~2 records a read, the third cut
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    big = b'{"text": "%s"}' % (b"x" * 400)  # longer than a whole read
    for i in range(9):
        await s.append(big if i == 4 else params(i))
    assert await collect(s, 9) == [big if i == 4 else params(i) for i in range(9)]
    await s.close()


async def test_one_spool_directory_per_shim(tmp_path):
    first = Spool(str(tmp_path), max_bytes=1 << 20)
    first.open()
    with pytest.raises(SpoolError, match="another shim"):
        Spool(str(tmp_path), max_bytes=1 << 20).open()
    await first.close()
    other = Spool(str(tmp_path / "other"), max_bytes=1 << 20)
    other.open()  # another directory: another shim
    await other.close()


async def test_spool_metrics(tmp_path):
    s = Spool(str(tmp_path), max_bytes=1 << 20)
    s.open()
    before = metrics.SHIM_SPOOLED._value.get()
    await s.append(params(0))
    assert metrics.SHIM_SPOOLED._value.get() == before + 1
    assert metrics.SHIM_SPOOL_BYTES._value.get() == s.bytes > 0
    assert metrics.SHIM_SPOOL_LIMIT._value.get() == 1 << 20
    replayed = metrics.SHIM_REPLAYED._value.get()
    with structlog.testing.capture_logs() as logs:
        await collect(s, 1)
    assert metrics.SHIM_REPLAYED._value.get() == replayed + 1 and metrics.SHIM_SPOOL_BYTES._value.get() == 0
    assert [e["event"] for e in logs if e["event"].startswith("spool.")] == ["spool.drained"]
    await s.close()


# --- sd_listen_fds ------------------------------------------------------------------


def test_listen_fds_are_only_for_the_named_pid():
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b"}
    assert listenfds.listen_fds(env, pid=2) == [] and env == {}  # read once, whoever they were for
    env = {"LISTEN_PID": "7", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a"}
    assert listenfds.listen_fds(env, pid=7) == [(3, "a"), (4, "unknown")]
    assert listenfds.listen_fds({}, pid=7) == []
    assert listenfds.listen_fds({"LISTEN_PID": "x", "LISTEN_FDS": "1"}, pid=7) == []


@pytest.mark.integration
def test_passed_socket_is_taken_by_family_and_name(monkeypatch):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        fd = os.dup(listener.fileno())
        monkeypatch.setattr(listenfds, "FIRST_FD", fd)  # systemd's fd 3 is pytest's own here
        env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "smppd-shim"}
        assert listenfds.passed_socket((socket.AF_INET,), "other", env=dict(env)) is None
        assert listenfds.passed_socket((socket.AF_UNIX,), env=dict(env)) is None
        sock = listenfds.passed_socket((socket.AF_INET,), "smppd-shim", env=dict(env))
        assert sock is not None and sock.fileno() == fd and sock.getsockname() == listener.getsockname()
        assert not sock.getblocking() and not sock.get_inheritable()
        sock.close()


# --- config -------------------------------------------------------------------------


def test_spool_config_keys_are_checked_and_named():
    from smppd import config

    from tests.rigs.config_rig import raw

    def parse(shim: dict) -> config.Config:
        r = raw()
        r["shim"].update(shim)
        return config.parse(r)

    cfg = parse({})
    assert (cfg.shim.spool_dir, cfg.shim.spool_after, cfg.shim.spool_max_bytes) == ("", 0.5, 1 << 30)
    beside_db = os.path.join(os.path.dirname(cfg.daemon.database), "shim-spool")
    assert config.spool_dir(cfg, {}) == beside_db
    assert config.spool_dir(cfg, {"STATE_DIRECTORY": "/var/lib/smppd-shim"}) == "/var/lib/smppd-shim/spool"
    cfg = parse({"spool_dir": "/srv/spool-a", "spool_after": 0.25, "spool_max_bytes": 1 << 24})
    assert config.spool_dir(cfg, {"STATE_DIRECTORY": "/var/lib/smppd-shim"}) == "/srv/spool-a"
    assert (cfg.shim.spool_after, cfg.shim.spool_max_bytes) == (0.25, 1 << 24)
    for bad, key in (({"spool_after": 0}, "shim.spool_after"), ({"spool_after": 60}, "shim.spool_after"),
                     ({"spool_max_bytes": 10}, "shim.spool_max_bytes"), ({"spool_dir": 3}, "shim.spool_dir")):
        with pytest.raises(config.ConfigError) as e:
            parse(bad)
        assert e.value.key == key


@pytest.mark.integration
async def test_a_passed_daemon_socket_is_served_kept_and_never_removed(tmp_path):
    """smppd.socket's file outlives the daemon; a call made between two daemons waits in
    the backlog and the next daemon answers it."""
    from smppd.rpc import RpcClient, RpcServer

    async def ping(params: dict) -> str:
        return "pong"

    path = str(tmp_path / "smppd.sock")
    systemd = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # what systemd holds
    systemd.bind(path)
    systemd.listen(64)
    try:
        first = RpcServer(str(tmp_path / "configured.sock"), {"ping": ping}, sock=systemd.dup())
        await first.start()
        assert first.path == path
        client = RpcClient(path, timeout=5)
        assert await client.call("ping") == "pong"
        await first.close()
        assert os.path.exists(path) and not os.path.exists(tmp_path / "configured.sock")
        waiting = asyncio.create_task(client.call("ping"))  # no daemon now: the kernel holds it
        await asyncio.sleep(0.3)
        assert not waiting.done()
        second = RpcServer(path, {"ping": ping}, sock=systemd.dup())
        await second.start()
        assert await waiting == "pong"
        await client.close()
        await second.close()
        assert os.path.exists(path)
    finally:
        systemd.close()


async def test_a_new_segment_that_cannot_be_made_refuses_without_hanging(tmp_path, monkeypatch):
    s = Spool(str(tmp_path), max_bytes=1 << 20, segment_bytes=1)
    s.open()
    await s.append(params(0))  # the segment is now past its size: the next append starts another

    def no_new_file(seq: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(s, "_new_segment", no_new_file)
    with pytest.raises(SpoolBroken):
        await asyncio.wait_for(s.append(params(1)), 5)
    monkeypatch.undo()
    await s.append(params(2))
    assert await collect(s, 2) == [params(0), params(2)]
    await s.close()


def test_an_unusable_spool_directory_is_a_spool_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SpoolError, match="cannot use spool directory"):
        Spool(str(tmp_path / "file" / "spool"), max_bytes=1 << 20).open()


def test_a_sighup_does_not_move_the_spool(tmp_path):
    """The spool's settings need a restart; a reload that changes them changes nothing."""
    from shim.__main__ import reload as shim_reload
    from smppd import config

    from tests.rigs.config_rig import EXAMPLE

    text = EXAMPLE.read_text()
    path = tmp_path / "config.toml"
    path.write_text(text)
    cfg = config.load(path)
    path.write_text(text.replace("[shim]\n", '[shim]\nspool_after = 0.2\n', 1))
    with structlog.testing.capture_logs() as logs:
        assert shim_reload(None, cfg, str(path)) is cfg  # type: ignore[arg-type]
    assert logs[0]["event"] == "config_reload_refused" and "shim.spool_after" in logs[0]["restart_needed"]
