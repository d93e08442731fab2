"""The RPC's JSON per intake post, json (before) against smppd.rpc.json_fast (after).

Three steps per post, as under `bench/kannel/run.py`: the daemon reads an
``intake.batch`` line of shim-made params, writes its answer, the shim reads the
answer.  Before and after alternate within each run; medians of the runs.

    .venv/bin/python bench/rpc_json.py --runs 5
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shim import bitrix_form as bf  # noqa: E402
from shim.app import _intake_json  # noqa: E402
from smppd import json_fast  # noqa: E402
from smppd.rpc import wire  # noqa: E402
from tests.rigs.form_rig import random_form  # noqa: E402

BATCH = 18  # posts per intake.batch line under the Kannel bench's load


def _lines() -> tuple[bytes, bytes]:
    rng = random.Random(5)
    params: list[bytes] = []
    while len(params) < BATCH:
        try:
            encoded = _intake_json(bf.parse_handler_post(random_form(rng)))
        except bf.FormError:
            continue
        if json_fast.loads(encoded) is not None:
            params.append(encoded)
    [(line, ids)] = wire.request_lines("intake", list(enumerate(params, 1)))
    answer = {"id": ids[0], "result": [{"result": {"id": 10**6 + i, "status": "queued", "duplicate": False}}
                                       for i in range(BATCH)]}
    return line.rstrip(b"\n"), wire.encode_json(answer).encode()


def _per_post(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n / BATCH * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("-n", type=int, default=20000, help="lines per step and run")
    args = parser.parse_args()
    request, reply = _lines()
    answer = json.loads(reply)
    exact = json.JSONDecoder(parse_int=wire._bounded_int, parse_constant=wire._no_constant).decode
    steps: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
        "daemon: read the intake.batch line": (lambda: exact(request.decode()), lambda: wire.decode_line(request)),
        "daemon: write the answer": (lambda: wire.encode_json(answer).encode() + b"\n", lambda: wire.encode_line(answer)),
        "shim: read the answer": (lambda: json.loads(reply), lambda: json_fast.loads(reply) or json.loads(reply)),
    }
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in steps}
    for _ in range(args.runs):
        for name, (before, after) in steps.items():
            results[name][0].append(_per_post(before, args.n))
            results[name][1].append(_per_post(after, args.n))
    total_before = total_after = 0.0
    for name, (before_runs, after_runs) in results.items():
        b, a = statistics.median(before_runs), statistics.median(after_runs)
        total_before += b
        total_after += a
        print(f"{name:38s} before {b:5.2f} µs/post  after {a:5.2f} µs/post")
    print(f"{'per message, both processes':38s} before {total_before:5.2f} µs/post  after {total_after:5.2f} µs/post")


if __name__ == "__main__":
    main()
