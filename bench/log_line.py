"""µs per log line through the production set-up (``smppd.ops.logs.configure(json=True)``).

    .venv/bin/python bench/log_line.py                 # this checkout
    .venv/bin/python bench/log_line.py --root /tmp/old # another checkout, same venv

Every message costs the daemon two lines (intake's ``message_received``, the journal's
``message_final``); this times the first, with its real fields, logged inside a running
event loop as the daemon logs it (lines leave in ``BatchedLines``' one write), into a file
that discards what it is given.  Also timed: a debug line the level filters out (the shim's
per-post line) and a warning through the repeat limiter.  Medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import statistics
import sys
import time
from pathlib import Path


class _Discard(io.TextIOBase):
    def write(self, text: str) -> int:  # type: ignore[override]
        return len(text)

    def isatty(self) -> bool:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args()
    sys.path.insert(0, str(args.root))
    import structlog

    from smppd.ops import logs

    out = _Discard()
    logs.configure(json=True, level=logging.INFO, file=out)
    log = structlog.get_logger("bench")

    def received(i: int) -> None:
        log.info("message_received", id=i, b24_id="ab" * 16, code="by_life", route="life",
                 to="+37529*****67", segments=1, status="queued", duplicate=False, reason=None,
                 marketing=False, held=None, repeat_of=None)

    def filtered(i: int) -> None:
        log.debug("bitrix24.post", code="by_life", message_id="ab" * 16, to="+37529*****67", outcome="stored")

    async def timed(line) -> float:  # noqa: ANN001
        start = time.perf_counter()
        for i in range(args.n):
            line(i)
        took = time.perf_counter() - start
        await asyncio.sleep(0.02)  # let the batched lines leave
        return took / args.n * 1e6

    async def run() -> dict[str, list[float]]:
        got: dict[str, list[float]] = {"message_received (info)": [], "filtered debug line": []}
        for _ in range(args.runs):
            got["message_received (info)"].append(await timed(received))
            got["filtered debug line"].append(await timed(filtered))
        return got

    for name, figures in asyncio.run(run()).items():
        print(f"{name:28s} median {statistics.median(figures):6.2f} µs  (min {min(figures):.2f}, "
              f"max {max(figures):.2f}, {args.runs} runs of {args.n})")


if __name__ == "__main__":
    main()
