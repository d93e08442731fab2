"""CPU per message of the daemon's intake path alone, without the store, the socket or the SMSC.

``Intake.__call__`` on the params the shim forwards (``shim/app.py`` ``_intake_json``),
through a store stub that answers at once, and a dispatch that builds the route's
submit_sm as ``SmppRoute.enqueue`` does: authentication, number normalization,
segment count, the message_received log line (to /dev/null, JSON as under systemd),
the metrics, and the segments. Every message has its own number and text, as in a CRM
broadcast. Prints the median of several runs of process CPU time per message, and
the same for the pieces on their own, so a change to one shows as a number.

    .venv/bin/python bench/intake_path.py [-n 20000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import structlog  # noqa: E402

from smppd import config as config_mod  # noqa: E402
from smppd import phone, text
from smppd.ops import logs  # noqa: E402
from smppd.intake import Intake, IntakeRequest  # noqa: E402
from smppd.model import Status  # noqa: E402
from smppd.smpp.segments import build_segments, route_encoding  # noqa: E402
from smppd.model import IntakeResult, OpenMessage, PortalRecord  # noqa: E402

MEMBER = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CONFIG = """
[daemon]
socket = "/tmp/unused.sock"
database = "/tmp/unused.db"

[shim]
listen = "127.0.0.1:8080"
handler_key = "bench-handler-key-0123456789abcdef"

[route.life]
kind = "smpp"
host = "127.0.0.1"
port = 2775
system_id = "smppd"
password = "secret"

[sender.by_bench]
route = "life"
sender_id = "DemoShop"
name = "SMS (bench)"
"""


class _Store:
    """Answers intake at once, so only the daemon's own CPU is measured."""

    def __init__(self) -> None:
        self.next_id = 0

    async def intake(self, message: Any) -> IntakeResult:
        self.next_id += 1
        return IntakeResult(self.next_id, Status.QUEUED, False)

    async def intake_many(self, messages: list[Any]) -> list[IntakeResult]:
        return [await self.intake(m) for m in messages]


def params(i: int, body: Callable[[int], str]) -> dict[str, Any]:
    return {
        "member_id": MEMBER, "domain": "bench.bitrix24.by", "application_token": TOKEN,
        "code": "by_bench", "b24_id": f"{i:032x}", "to": f"+37529{1000000 + i % 9000000:07d}",
        "text": body(i), "module_id": "crm",
        "bindings": [{"owner_type_id": 2, "owner_id": 1541}, {"owner_type_id": 3, "owner_id": 877}],
        "ts": 1700000000 + i,
    }


BODIES: dict[str, Callable[[int], str]] = {
    "latin": lambda i: f"Order {i} is ready for pickup, see you 9:00-21:00",
    "cyrillic": lambda i: f"Заказ {i} готов к выдаче, ждём вас с 9:00 до 21:00",
    "latin 3 parts": lambda i: f"Order {i}: " + "your parcel is waiting at the pickup point. " * 9,
}


def cpu_per_call(fn: Callable[[Any], Any], items: list[Any]) -> float:
    t0 = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - t0) / len(items) * 1e6


async def intake_run(n: int, body: Callable[[int], str], first: int, batch_size: int = 0) -> float:
    """CPU per message of ``Intake.__call__`` per post, or of ``Intake.many``
    on batches of ``batch_size`` posts (as the RPC server runs them)."""
    cfg = config_mod.parse(tomllib.loads(CONFIG))
    portal = PortalRecord(MEMBER, "bench.bitrix24.by", "", "", "", "", TOKEN, "", "")
    route = cfg.routes["life"]
    built: list[int] = []

    def dispatch(message: OpenMessage) -> None:
        built.append(len(build_segments(message, route)))

    intake = Intake(cfg, _Store(), lambda: {MEMBER: portal}, dispatch)  # type: ignore[arg-type]
    batch = [params(first + i, body) for i in range(n)]
    t0 = time.process_time()
    if batch_size:
        for at in range(0, n, batch_size):
            await intake.many(batch[at:at + batch_size])
    else:
        for p in batch:
            await intake(p)
    per = (time.process_time() - t0) / n * 1e6
    assert len(built) == n
    return per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32, help="posts per Intake.many batch")
    args = ap.parse_args()
    devnull = open("/dev/null", "w")  # noqa: SIM115 - for the life of the process
    sys.stdout, real_stdout = devnull, sys.stdout
    logs.configure(json=True)
    sys.stdout = real_stdout
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=devnull))
    route = config_mod.parse(tomllib.loads(CONFIG)).routes["life"]
    print(f"CPU µs per message, median of {args.runs} runs of {args.n}")
    for label, body in BODIES.items():
        runs = [asyncio.run(intake_run(args.n, body, r * args.n)) for r in range(args.runs)]
        print(f"  Intake.__call__ + build_segments, {label:<14} {statistics.median(runs):7.1f}")
        runs = [asyncio.run(intake_run(args.n, body, r * args.n, args.batch)) for r in range(args.runs)]
        print(f"  Intake.many[{args.batch}] + build_segments, {label:<11} {statistics.median(runs):7.1f}")
    numbers = [f"+37529{1000000 + i * 7919 % 9000000:07d}" for i in range(args.n)]
    latin = [BODIES["latin"](i) for i in range(args.n)]
    cyr = [BODIES["cyrillic"](i) for i in range(args.n)]
    countries = frozenset({"BY"})
    # The log line alone: the production processors and wrapper, delivered to a logger
    # that only returns it (no write), so the figure is the line's CPU, not the I/O's.
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())
    line_log = structlog.get_logger("bench.line")
    masked = [phone.mask(n) for n in numbers]
    pieces: dict[str, tuple[Callable[[Any], Any], list[Any]]] = {
        "phone.normalize('+37529…')": (lambda s: phone.normalize(s, allowed_regions=countries), numbers),
        "phone.normalize('8029…')": (lambda s: phone.normalize("80" + s[4:]), numbers),
        "phone.normalize('375…', no '+')": (lambda s: phone.normalize(s[1:]), numbers),
        "phone.normalize('8 9…', RU in a BY CRM)": (lambda s: phone.normalize("8916" + s[-7:]), numbers),
        "phone.mask": (phone.mask, numbers),
        "log line message_received (production set-up)": (
            lambda to: line_log.info("message_received", id=1, b24_id="ab" * 16, code="by_bench", route="life",
                                     to=to, segments=1, status="queued", duplicate=False, reason=None,
                                     marketing=False, held=None, repeat_of=None), masked),
        "route_encoding, latin": (lambda s: route_encoding(route, s), latin),
        "route_encoding, cyrillic": (lambda s: route_encoding(route, s), cyr),
        "text.encode, latin": (text.encode, latin),
        "IntakeRequest.from_params": (IntakeRequest.from_params, [params(i, BODIES["latin"]) for i in range(args.n)]),
    }
    for label, (fn, items) in pieces.items():
        print(f"  {label:<46} {statistics.median(cpu_per_call(fn, items) for _ in range(args.runs)):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
