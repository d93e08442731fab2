"""What the end-to-end benchmarks share: processes, their CPU and peak RSS, percentiles.

Each gateway process (daemon, shim, Kannel's boxes) and the simulated SMSC run as
separate OS processes, so the figures are per process and read from /proc: CPU
seconds from ``/proc/PID/stat`` (utime + stime) and peak RSS from ``VmHWM`` in
``/proc/PID/status``. No psutil: two files are all we need.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class ProcStats:
    cpu_s: float
    peak_rss_mb: float
    rss_mb: float


def proc_stats(pid: int) -> ProcStats:
    """CPU seconds so far and peak/current RSS of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14, 15)
    hwm = rss = 0.0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return ProcStats(cpu, hwm, rss)


def self_stats() -> ProcStats:
    return proc_stats(os.getpid())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class Smsc:
    """The in-project SMSC simulator (``bench/smsc_proc.py``) in a process of its own.

    On SIGTERM it writes what it saw: per message text, how many submit_sm carried it
    and when the first arrived (wall clock), so lost and duplicated messages and the
    post → accepted-by-SMSC latency are counted at the operator's side.
    """

    def __init__(self, tmp: Path, *, receipt_delay: float = 0.05, record: bool = True,
                 port: int | None = None, binds_out: Path | None = None) -> None:
        self.port = port or free_port()
        self.out = tmp / "smsc-seen.json"
        self.progress_file = tmp / "smsc-progress"
        args = [PYTHON, str(ROOT / "bench" / "smsc_proc.py"), "--port", str(self.port),
                "--receipt-delay", str(receipt_delay), "--out", str(self.out), "--progress", str(self.progress_file)]
        if not record:
            args.append("--no-record")
        if binds_out is not None:
            args += ["--binds-out", str(binds_out)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        wait_for_port(self.port)

    def stats(self) -> ProcStats:
        return proc_stats(self.proc.pid)

    def progress(self) -> tuple[int, float]:
        """(submit_sm accepted so far, when), refreshed by the SMSC every 0.5 s."""
        try:
            count, at = self.progress_file.read_text().split()
        except (FileNotFoundError, ValueError):
            return 0, time.time()
        return int(count), float(at)

    def stop(self) -> dict[str, list[float]]:
        """{text: [count, first submitted_at]}"""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        if not self.out.exists():
            return {}
        return json.loads(self.out.read_text())


def stop(proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stats_of(procs: dict[str, subprocess.Popen[bytes]]) -> dict[str, ProcStats]:
    """CPU and RSS of each process still running, by name."""
    return {name: proc_stats(p.pid) for name, p in procs.items() if p.poll() is None}


def stop_in_order(procs: dict[str, subprocess.Popen[bytes]], order: tuple[str, ...]) -> None:
    """The front first (it stops taking load), then what it feeds."""
    for name in order:
        if name in procs:
            stop(procs[name])
