"""A read-only database directory at start (issue 19 item 4): one line, exit 2, no hang.

Through the real ``smppd run`` process. As root (CI), chmod stops nothing, so the
directory is made read-only the way production meets it: a read-only bind mount.
Where mounting is not allowed, an unprivileged user meets a directory it may not write.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from smppd.store import StoreOpenError, write_problem

CONFIG = """
[daemon]
socket = "{tmp}/smppd.sock"
database = "{db}"

[shim]
listen = "127.0.0.1:0"
handler_key = "readonly-test-key-0123456789abcdef"

[route.life]
host = "127.0.0.1"
port = 9
system_id = "smppd"
password = "secret"

[sender.by_life]
route = "life"
sender_id = "DemoShop"
"""


def _run(tmp: Path, db: Path) -> tuple[int, list[str], float]:
    cfg = tmp / "config.toml"
    cfg.write_text(CONFIG.format(tmp=tmp, db=db))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "smppd.cli", "run", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=30)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    return proc.returncode, lines, time.monotonic() - started


def _make_database(tmp: Path, db: Path) -> None:
    """A database the daemon wrote itself (WAL, migrated), then stopped."""
    from smppd.store import Store
    import asyncio

    async def create() -> None:
        store = Store(str(db))
        await store.open()
        await store.close()

    asyncio.run(create())


class ReadOnly:
    """Makes a directory read-only for the daemon: a bind mount as root, else a mode."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.mounted = False

    def __enter__(self) -> "ReadOnly":
        if os.geteuid() == 0:
            ok = subprocess.run(["mount", "--bind", str(self.directory), str(self.directory)],
                                capture_output=True).returncode == 0
            if ok:
                self.mounted = True
                if subprocess.run(["mount", "-o", "remount,bind,ro", str(self.directory)],
                                  capture_output=True).returncode != 0:
                    self.__exit__()
                    pytest.skip("root, but this sandbox refuses a read-only remount")
                return self
            pytest.skip("root cannot mount here, and chmod does not stop root")
        self.directory.chmod(0o555)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.mounted:
            subprocess.run(["umount", str(self.directory)], check=True)
            self.mounted = False
        else:
            self.directory.chmod(0o755)


def _assert_one_line(rc: int, lines: list[str], took: float, db: Path, problem: str) -> None:
    assert rc == 2, lines
    assert took < 15, "a start that cannot work must not wait for systemd's start timeout"
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["event"] == "store_open_failed"
    assert record["path"] == str(db)
    assert problem in record["problem"]
    assert "Traceback" not in lines[0]


@pytest.mark.integration
@pytest.mark.parametrize("existing", [False, True], ids=["new-database", "existing-database"])
def test_read_only_database_directory(tmp_path: Path, existing: bool) -> None:
    state = tmp_path / "state"
    state.mkdir()
    db = state / "smppd.db"
    if existing:
        _make_database(tmp_path, db)
        assert db.exists()
    with ReadOnly(state) as ro:
        rc, lines, took = _run(tmp_path, db)
        expected = "read-only filesystem" if ro.mounted else "not writable"
    _assert_one_line(rc, lines, took, db, expected)


@pytest.mark.integration
def test_missing_directory_on_a_read_only_filesystem(tmp_path: Path) -> None:
    """The daemon creates its state directory; on a read-only parent that fails the same way."""
    state = tmp_path / "state"
    state.mkdir()
    db = state / "sub" / "smppd.db"
    with ReadOnly(state) as ro:
        rc, lines, took = _run(tmp_path, db)
        expected = "read-only filesystem" if ro.mounted else "not writable"
    _assert_one_line(rc, lines, took, db, expected)


def test_write_problem_is_none_for_a_writable_directory(tmp_path: Path) -> None:
    assert write_problem(str(tmp_path / "smppd.db")) is None
    assert str(StoreOpenError("/x/y.db", "the directory /x is on a read-only filesystem")) == \
        "/x/y.db: the directory /x is on a read-only filesystem"
