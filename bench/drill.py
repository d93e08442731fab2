"""The no-loss drill (issue 13): posts keep coming while the daemon and the shim are hurt.

    .venv/bin/python bench/drill.py                     # the full drill: 500 posts/s for 60 s,
                                                        # 5 daemon restarts, 5 kill -9, 30 s SIGSTOP,
                                                        # 2 shim restarts
    .venv/bin/python bench/drill.py --rate 100 --duration 10 --restarts 1 --kills 1 --stop 0 --shim-restarts 0
    .venv/bin/python bench/drill.py --clean 20          # the spool's cost when the daemon answers
    .venv/bin/python bench/drill.py --drain 30          # the spool's drain rate after a 30 s outage

The real processes, as in production: ``smppd run`` and ``smppd-shim`` each get their
listening socket passed the way systemd's ``smppd.socket``/``smppd-shim.socket`` pass
it (this script holds both sockets and starts each child with ``LISTEN_PID``/
``LISTEN_FDS``/``LISTEN_FDNAMES`` and the socket at fd 3), so a restart leaves
connections waiting in the backlog. The SMSC simulator is a process of its own;
the simulated Bitrix24 portal (statuses pushed to it) and the open-loop load
generator (one new connection per post, as Bitrix24's queue servers make them; a
post is never retried: Bitrix24 does not retry) run here.

Printed: posts sent, answered 200 (stored by the daemon / kept in the shim's spool),
answered otherwise, no answer; at the SMSC; final at the portal; missing (answered
200 but not at the SMSC or not final) -- the bar is 0 -- and duplicates at the SMSC
(more than one submit_sm for a text: the SMPP in-flight window at a kill -9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import structlog  # noqa: E402

from bench.e2e import CODE, FINAL, Post, daemon_config, message_text, prepare_posts  # noqa: E402
from bench.procs import PYTHON, ROOT, Smsc, free_port, pct, proc_stats  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal  # noqa: E402

# Starts a program the way systemd does for a socket unit: the socket at fd 3,
# LISTEN_PID = the pid that execs the program (this one: exec keeps it).
_ACTIVATE = (
    "import os, sys\n"
    "fd, name = int(sys.argv[1]), sys.argv[2]\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES=name)\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[3:]])\n"
)


def activated(sock: socket.socket, name: str, args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``python args...`` with ``sock`` passed as systemd passes a socket unit's."""
    out = open(log, "ab")
    return subprocess.Popen([PYTHON, "-c", _ACTIVATE, str(sock.fileno()), name, *args],
                            pass_fds=(sock.fileno(),), stdout=out, stderr=out, cwd=ROOT)


@dataclass
class Gateway:
    """The daemon and the shim, started on sockets this process holds (as systemd would)."""

    tmp: Path
    config: Path
    shim_port: int
    metrics_port: int
    daemon_sock: socket.socket = field(init=False)
    shim_sock: socket.socket = field(init=False)
    daemon: subprocess.Popen[bytes] | None = None
    shim: subprocess.Popen[bytes] | None = None
    events: list[tuple[float, str]] = field(default_factory=list)
    shim_cpu_s: float = 0.0  # of the shims already stopped

    def __post_init__(self) -> None:
        self.daemon_sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.daemon_sock.bind(str(self.tmp / "smppd.sock"))
        os.chmod(self.tmp / "smppd.sock", 0o660)
        self.daemon_sock.listen(4096)
        self.shim_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.shim_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.shim_sock.bind(("127.0.0.1", self.shim_port))
        self.shim_sock.listen(4096)

    def start_daemon(self) -> None:
        self.daemon = activated(self.daemon_sock, "smppd", ["-m", "smppd.cli", "run", "-c", str(self.config)],
                                self.tmp / "daemon.log")

    def start_shim(self) -> None:
        self.shim = activated(self.shim_sock, "smppd-shim", ["-m", "shim", "-c", str(self.config)],
                              self.tmp / "shim.log")

    def note(self, what: str) -> None:
        self.events.append((time.time(), what))

    async def _wait(self, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
            await asyncio.sleep(0.02)

    async def restart_daemon(self) -> None:
        assert self.daemon is not None
        self.note("daemon SIGTERM + start")
        self.daemon.send_signal(signal.SIGCONT)
        self.daemon.send_signal(signal.SIGTERM)
        await self._wait(self.daemon)
        self.start_daemon()

    async def kill_daemon(self) -> None:
        assert self.daemon is not None
        self.note("daemon kill -9 + start")
        self.daemon.kill()
        await self._wait(self.daemon)
        self.start_daemon()

    async def stop_daemon_for(self, seconds: float) -> None:
        assert self.daemon is not None
        self.note(f"daemon SIGSTOP {seconds:.0f} s")
        self.daemon.send_signal(signal.SIGSTOP)
        await asyncio.sleep(seconds)
        self.daemon.send_signal(signal.SIGCONT)
        self.note("daemon SIGCONT")

    async def restart_shim(self) -> None:
        assert self.shim is not None
        self.note("shim SIGTERM + start")
        cpu = self.shim_cpu()
        self.shim.send_signal(signal.SIGTERM)
        await self._wait(self.shim)
        self.shim_cpu_s += cpu
        self.start_shim()

    def shim_cpu(self) -> float:
        try:
            return proc_stats(self.shim.pid).cpu_s if self.shim is not None else 0.0
        except (FileNotFoundError, ProcessLookupError):
            return 0.0

    def shim_written(self) -> int:
        """Bytes the shim process has written to storage (``/proc/PID/io``)."""
        assert self.shim is not None
        with open(f"/proc/{self.shim.pid}/io") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))

    async def wait_daemon(self, timeout: float = 60.0) -> None:
        from smppd.rpc import RpcClient

        client = RpcClient(str(self.tmp / "smppd.sock"), timeout=2)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await client.call("ping", {})
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the daemon does not answer") from None
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    async def shim_metrics(self) -> dict[str, float]:
        """The shim's spool figures from its /metrics."""
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp:
                text = await resp.text()
        out = {}
        for name in ("smppd_shim_spooled_total", "smppd_shim_spool_replayed_total", "smppd_shim_spool_bytes",
                     "smppd_shim_spool_oldest_seconds"):
            m = re.search(rf"^{name} (\S+)$", text, re.M)
            out[name] = float(m[1]) if m else 0.0
        return out

    def stop(self) -> None:
        for proc in (self.shim, self.daemon):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.daemon_sock.close()
        self.shim_sock.close()


def drill_config(tmp: Path, portal: SimulatedPortal, smsc_port: int, shim_port: int, metrics_port: int,
                 key: str, spool_after: float) -> Path:
    path = daemon_config(tmp, portal, smsc_port=smsc_port, shim_port=shim_port, key=key, window=50,
                         reconnect_max=1.0)
    text = path.read_text().replace(
        "[shim]\n", f'[shim]\nspool_dir = "{tmp}/spool"\nspool_after = {spool_after}\n'
                    f'metrics = "127.0.0.1:{metrics_port}"\n', 1)
    path.write_text(text)
    return path


async def open_loop(url: str, portal: SimulatedPortal, posts: list[Post], rate: float,
                    errors: dict[str, int]) -> None:
    """``rate`` posts a second whatever the answers, each on its own connection, never retried."""
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    loop = asyncio.get_running_loop()

    async def one(p: Post) -> None:
        p.posted_at = time.time()
        try:
            p.status, text = await portal.post_to_handler(http, url, p.body)
            p.spooled = '"spooled"' in text  # type: ignore[attr-defined]
            p.answer_s = time.time() - p.posted_at  # type: ignore[attr-defined]
        except (aiohttp.ClientError, TimeoutError) as exc:
            p.status = -1
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as http:
        t0 = loop.time()
        tasks = []
        for i, p in enumerate(posts):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(p)))
        await asyncio.gather(*tasks)


def schedule(duration: float, restarts: int, kills: int, stop: float, shim_restarts: int) -> list[tuple[float, str]]:
    """When each fault happens: restarts and kills alternate, the shim restarts among
    them, evenly spread over the run; the SIGSTOP sits in the middle."""
    kinds: list[str] = []
    r, k = restarts, kills
    while r or k:
        if r:
            kinds.append("restart")
            r -= 1
        if k:
            kinds.append("kill")
            k -= 1
    for j in range(shim_restarts):
        kinds.insert(round((j + 1) * len(kinds) / (shim_restarts + 1)) + j, "shim")
    free = max(duration - stop, 1.0)
    step = free / (len(kinds) + 1)
    plan = [(n * step + (stop if stop > 0 and n * step >= free / 2 else 0.0), kind)
            for n, kind in enumerate(kinds, 1)]
    if stop > 0:
        plan.append((free / 2, "stop"))
    return sorted(plan)


async def faults(gw: Gateway, plan: list[tuple[float, str]], stop: float, t0: float) -> None:
    for at, kind in plan:
        delay = t0 + at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if kind == "restart":
            await gw.restart_daemon()
        elif kind == "kill":
            await gw.kill_daemon()
        elif kind == "shim":
            await gw.restart_shim()
        elif kind == "stop":
            await gw.stop_daemon_for(stop)


async def wait_final(portal: SimulatedPortal, posts: list[Post], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = [p for p in posts if p.status == 200]
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if portal.messages[p.b24_id].status not in FINAL]
        await asyncio.sleep(0.2)


async def run(args: argparse.Namespace, *, mode: str = "drill") -> dict[str, Any]:
    """One drill (``mode``: drill, clean, drain); returns its figures."""
    with tempfile.TemporaryDirectory(prefix="smppd-drill-") as tmp_s:
        tmp = Path(tmp_s)
        portal = SimulatedPortal(rate=None)
        await portal.start()
        smsc = Smsc(tmp, receipt_delay=0.05)
        key = secrets.token_urlsafe(24)
        shim_port, metrics_port = free_port(), free_port()
        config = drill_config(tmp, portal, smsc.port, shim_port, metrics_port, key, args.spool_after)
        gw = Gateway(tmp, config, shim_port, metrics_port)
        figures: dict[str, Any] = {"mode": mode}
        try:
            gw.start_daemon()
            gw.start_shim()
            await gw.wait_daemon()
            await asyncio.sleep(1.0)  # the bind and the shim settle
            url = f"http://127.0.0.1:{shim_port}/bitrix24/{CODE}?key={key}"
            duration = {"drill": args.duration, "clean": args.clean, "drain": args.drain + 5}[mode]
            posts = prepare_posts(portal, int(args.rate * duration))
            for p in posts:
                p.spooled = False  # type: ignore[attr-defined]
            t0 = time.monotonic()
            errors: dict[str, int] = {}
            figures["errors"] = errors
            load = asyncio.create_task(open_loop(url, portal, posts, args.rate, errors))
            if mode == "drill":
                plan = schedule(args.duration, args.restarts, args.kills, args.stop, args.shim_restarts)
                await faults(gw, plan, args.stop, t0)
            elif mode == "clean":
                written, cpu = gw.shim_written(), gw.shim_cpu()
            elif mode == "drain":
                await asyncio.sleep(2.0)
                await gw.stop_daemon_for(args.drain)
                cont = time.monotonic()
                before = await gw.shim_metrics()
                while (m := await gw.shim_metrics())["smppd_shim_spool_bytes"] > 0:
                    await asyncio.sleep(0.1)
                drained = time.monotonic() - cont
                replayed = m["smppd_shim_spool_replayed_total"] - before["smppd_shim_spool_replayed_total"]
                figures.update(spooled_at_cont=before["smppd_shim_spooled_total"], drain_s=drained,
                               drain_replayed=replayed, drain_rate=replayed / drained if drained else float("nan"))
            await load
            t_posted = time.monotonic()
            if mode == "clean":
                figures.update(shim_written_bytes=gw.shim_written() - written,
                               shim_cpu_us=1e6 * (gw.shim_cpu() - cpu) / len(posts),
                               spool=await gw.shim_metrics())
            if gw.daemon is not None and gw.daemon.poll() is not None:
                gw.start_daemon()  # a fault at the very end: the daemon comes back, as systemd restarts it
            await gw.wait_daemon()
            await wait_final(portal, posts, args.timeout)
            figures["final_wait_s"] = time.monotonic() - t_posted
            figures["shim_metrics"] = await gw.shim_metrics()
        finally:
            gw.stop()
            seen = smsc.stop()
            await portal.stop()
    figures.update(count(posts, portal, seen))
    figures["events"] = [(round(at - gw.events[0][0], 1) if gw.events else 0, what) for at, what in gw.events]
    return figures


def count(posts: list[Post], portal: SimulatedPortal, seen: dict[str, list[float]]) -> dict[str, Any]:
    ok = [p for p in posts if p.status == 200]
    final = [p for p in ok if portal.messages[p.b24_id].status in FINAL]
    at_smsc = [p for p in posts if message_text(p.i) in seen]
    missing = [p for p in ok if message_text(p.i) not in seen or portal.messages[p.b24_id].status not in FINAL]
    latencies = [seen[message_text(p.i)][1] - p.posted_at for p in ok if message_text(p.i) in seen]
    answers = [p.answer_s for p in ok if not p.spooled]  # type: ignore[attr-defined]
    return {
        "sent": len(posts), "answered_200": len(ok), "spooled": sum(bool(getattr(p, "spooled", False)) for p in ok),
        "answered_other": sum(1 for p in posts if p.status not in (200, -1)),
        "no_answer": sum(1 for p in posts if p.status == -1),
        "no_answer_but_sent": sum(1 for p in posts if p.status == -1 and message_text(p.i) in seen),
        "at_smsc": len(at_smsc), "final": len(final), "missing": len(missing),
        "duplicates": sum(1 for p in at_smsc if seen[message_text(p.i)][0] > 1),
        "regressions": sum(len(m.regressions()) for m in portal.messages.values()),
        "smsc_p50_s": pct(latencies, 0.5), "smsc_p99_s": pct(latencies, 0.99),
        "answer_p50_ms": 1000 * pct(answers, 0.5), "answer_p99_ms": 1000 * pct(answers, 0.99),
        "answer_p999_ms": 1000 * pct(answers, 0.999), "answer_max_ms": 1000 * max(answers, default=0.0),
    }


def report(r: dict[str, Any]) -> None:
    print(f"{r['mode']}: sent {r['sent']}, answered 200 {r['answered_200']} (spooled {r['spooled']}), "
          f"other answers {r['answered_other']}, no answer {r['no_answer']} (of which sent anyway "
          f"{r['no_answer_but_sent']}){' ' + str(r['errors']) if r['errors'] else ''}")
    print(f"  at the SMSC {r['at_smsc']}, final in the portal {r['final']}, MISSING {r['missing']}, "
          f"duplicates at the SMSC {r['duplicates']}, status regressions {r['regressions']}")
    print(f"  post -> 200 from the daemon (not spooled) p50 {r['answer_p50_ms']:.1f} ms p99 {r['answer_p99_ms']:.1f} ms "
          f"p99.9 {r['answer_p999_ms']:.1f} ms max {r['answer_max_ms']:.0f} ms")
    print(f"  post -> SMSC p50 {r['smsc_p50_s']:.2f} s p99 {r['smsc_p99_s']:.2f} s; "
          f"last final {r['final_wait_s']:.1f} s after the last post")
    if r["mode"] == "clean":
        print(f"  spool on the normal path: {int(r['spool']['smppd_shim_spooled_total'])} posts spooled, "
              f"shim wrote {r['shim_written_bytes']} bytes to disk, shim CPU {r['shim_cpu_us']:.0f} µs/post")
    if r["mode"] == "drain":
        print(f"  drain after a {r.get('outage', 0):.0f} s outage: {int(r['drain_replayed'])} spooled posts replayed "
              f"in {r['drain_s']:.1f} s = {r['drain_rate']:.0f} posts/s")
    if r["events"]:
        print("  events: " + "; ".join(f"{at} s {what}" for at, what in r["events"]))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", type=float, default=500.0, help="posts a second (default 500)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of posting (default 60)")
    p.add_argument("--restarts", type=int, default=5, help="daemon restarts (SIGTERM + start; default 5)")
    p.add_argument("--kills", type=int, default=5, help="daemon kill -9 + start (default 5)")
    p.add_argument("--stop", type=float, default=30.0, help="seconds of SIGSTOP of the daemon (default 30, 0 = none)")
    p.add_argument("--shim-restarts", type=int, default=2, help="shim restarts (default 2)")
    p.add_argument("--spool-after", type=float, default=0.5, help="shim.spool_after (default 0.5)")
    p.add_argument("--clean", type=float, default=0.0, help="instead: seconds of posting with no fault")
    p.add_argument("--drain", type=float, default=0.0, help="instead: a SIGSTOP outage of this many seconds, "
                                                             "then the spool's drain rate")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the last final status")
    p.add_argument("--json", action="store_true", help="print the figures as JSON too")
    return p


def main() -> int:
    args = parser().parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    mode = "clean" if args.clean else "drain" if args.drain else "drill"
    r = asyncio.run(run(args, mode=mode))
    r["outage"] = args.drain
    report(r)
    if args.json:
        print(json.dumps({k: v for k, v in r.items()}, default=str))
    return 0 if r["missing"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
