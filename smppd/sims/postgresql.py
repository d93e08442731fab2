"""A throwaway PostgreSQL cluster for the tests and the benchmarks: ``initdb`` + ``pg_ctl``
from Debian's ``postgresql`` package, on a Unix socket in a temp directory, no TCP.

The server keeps its durability settings (fsync, synchronous_commit, full_page_writes
on): the store's promise is "durable before the ack", and a test or a figure made with
fsync off would measure something else. Each test gets a schema of its own
(``new_schema``), which costs a CREATE SCHEMA, not a CREATE DATABASE.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ..store.postgres import create_database, create_schema, drop_schema

DATABASE = "smppd"


@dataclass
class _Cpu:
    cpu_s: float
    peak_rss_mb: float  # the largest process's RSS when read (PostgreSQL shares its buffers)

USER = "smppd"


def find_bindir() -> str | None:
    """The newest installed PostgreSQL's bin directory (Debian keeps initdb off PATH), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
                   if p.split("/")[4].isdigit() else 0)
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


class Cluster:
    """One server in a temp directory; ``start``, then ``url`` per test, ``stop`` at the end.

    As root (CI, this machine) the server runs as the ``postgres`` user the package
    creates: PostgreSQL refuses to run as root.
    """

    def __init__(self, bindir: str, *, port: int = 5432) -> None:
        self.bindir = bindir
        self.port = port
        self.root = tempfile.mkdtemp(prefix="smppd-pg-")
        self.data = os.path.join(self.root, "data")
        self._as: list[str] = []
        self._schemas = itertools.count(1)
        self.running = False
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", "postgres", "--"]

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self._as, os.path.join(self.bindir, tool), *args], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    def start(self) -> None:
        # --no-sync: initdb's own files only (the throwaway cluster's birth); the server
        # itself runs with fsync on.
        self._run("initdb", "-D", self.data, "-U", USER, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        self.restart()
        create_database(self.url("postgres"), DATABASE)

    def restart(self) -> None:
        """Start the server (again, after ``crash``)."""
        options = " ".join([
            "-c listen_addresses=''", f"-c unix_socket_directories={self.root}", f"-c port={self.port}",
            "-c fsync=on", "-c synchronous_commit=on", "-c full_page_writes=on",
            "-c max_connections=60", "-c shared_buffers=32MB",
        ])
        self._run("pg_ctl", "-D", self.data, "-l", os.path.join(self.root, "log"), "-o", options, "-w",
                  "-t", "60", "start")
        self.running = True

    def crash(self) -> None:
        """Stop the server as a crash would (immediate: no checkpoint, every connection cut);
        ``restart`` recovers from its WAL."""
        self._signal(signal.SIGQUIT)

    def _signal(self, sig: int, timeout: float = 60.0) -> None:
        """Signal the postmaster (SIGINT: fast shutdown, SIGQUIT: immediate) and wait until it
        has gone. A signal, not pg_ctl: the suite's last test tears the cluster down, and a test
        that is not an integration test may start no process (tests/conftest.py)."""
        pid_file = os.path.join(self.data, "postmaster.pid")
        try:
            with open(pid_file) as f:
                pid = int(f.readline())
            os.kill(pid, sig)
        except (OSError, ValueError):
            self.running = False
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self.running = False

    def url(self, database: str = DATABASE, *, schema: str | None = None) -> str:
        """A ``postgresql://`` URL for the socket; with ``schema`` every table lives in that schema."""
        url = f"postgresql://{USER}@/{database}?host={quote(self.root, safe='/')}&port={self.port}"
        if schema is not None:
            url += "&options=" + quote(f"-csearch_path={schema}", safe="")
        return url

    def new_schema(self) -> str:
        """An empty schema of its own (per test): the store migrates into it from nothing."""
        name = f"t{os.getpid()}_{next(self._schemas)}"
        create_schema(self.url(), name)
        return name

    def drop_schema(self, name: str) -> None:
        drop_schema(self.url(), name)

    def cpu(self) -> Any:
        """CPU seconds so far of the server (the postmaster, every live backend and helper, and
        the children that ended), as ``bench.procs.ProcStats``-like (cpu_s, peak_rss_mb)."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            master = int(f.readline())
        ticks = os.sysconf("SC_CLK_TCK")
        total, peak = 0.0, 0.0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue  # ended meanwhile
            pid, ppid = int(entry), int(fields[1])
            if pid == master:
                total += (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / ticks
            elif ppid == master:
                total += (int(fields[11]) + int(fields[12])) / ticks
            else:
                continue
            peak = max(peak, int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
        return _Cpu(total, peak)

    def stop(self) -> None:
        try:
            if self.running:
                self._signal(signal.SIGINT)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
