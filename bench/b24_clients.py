"""Our REST client against fast-bitrix24, on the one call the hot path makes: a ``batch`` of
50 ``messageservice.message.status.update`` against the simulated portal on loopback.

Prints the median and p90 wall time per batch for each client (same server, same process,
so the difference is client overhead), then what each does with the cases the pusher
depends on: per-command errors, 429 OPERATION_TIME_LIMIT. fast-bitrix24 is not a project
dependency; install it into the venv to run this: ``pip install fast-bitrix24``.

    python bench/b24_clients.py [-n BATCHES]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import aiohttp

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.model import PortalRecord
from smppd.bitrix24.rest import RestClient, RestError

CODE = "by_sms_main"
UPDATE = "messageservice.message.status.update"


def commands(ids: list[str], status: str) -> dict[str, tuple[str, dict[str, str]]]:
    return {f"m{i}": (UPDATE, {"CODE": CODE, "MESSAGE_ID": m, "STATUS": status}) for i, m in enumerate(ids)}


def as_cmd(cmds: dict[str, tuple[str, dict[str, str]]]) -> dict[str, str]:
    from urllib.parse import urlencode
    return {k: f"{method}?{urlencode(params)}" for k, (method, params) in cmds.items()}


def figures(name: str, times: list[float]) -> str:
    times = sorted(times)
    p90 = times[int(len(times) * 0.9)]
    return f"{name:<14} median {statistics.median(times) * 1e3:6.2f} ms   p90 {p90 * 1e3:6.2f} ms per batch of 50"


async def main(batches: int) -> None:
    from importlib.metadata import version

    from fast_bitrix24 import BitrixAsync

    async with SimulatedPortal(rate=None) as portal, aiohttp.ClientSession() as http, \
            aiohttp.ClientSession(raise_for_status=True) as fb_http:
        a = portal.install_auth()
        ours = RestClient(http, PortalRecord(**a), rate=None,
                          max_operating_wait=5.0)  # the 429 below lasts 1.5 s, not the 10-min window

        async def token() -> str:
            return portal.access_token

        # respect_velocity_policy=False crashes 1.8.14 on a raw batch (KeyError 'batch' in
        # add_throttler_records), so its limiter stays on, opened wide for a fair overhead figure.
        fb = BitrixAsync(portal.client_endpoint, token_func=token, verbose=False,
                         request_pool_size=100_000, requests_per_second=100_000.0,
                         operating_time_limit=10**9, client=fb_http)
        ids = [portal.create_message(CODE, "+375291234567", "x")[0] for _ in range(50)]
        t_ours, t_fb = [], []
        for i in range(batches):  # interleaved so both see the same server state
            status = ("queued", "sent")[i % 2]
            start = time.perf_counter()
            await ours.batch(commands(ids, status))
            t_ours.append(time.perf_counter() - start)
            start = time.perf_counter()
            await fb.call("batch", {"halt": 0, "cmd": as_cmd(commands(ids, status))}, raw=True)
            t_fb.append(time.perf_counter() - start)
        print(f"batch of 50 status updates, {batches} batches each, simulated portal on loopback")
        print(figures("smppd client", t_ours))
        print(figures("fast-bitrix24", t_fb) + f"   (version {version('fast-bitrix24')})")
        print(f"ratio fast-bitrix24 / ours: {statistics.median(t_fb) / statistics.median(t_ours):.2f}")

        # Per-command errors: one purged message in the batch.
        portal.purge(ids[7])
        _, errors = await ours.batch(commands(ids, "delivered"))
        print(f"per-command error, ours:          {sorted((k, e.code) for k, e in errors.items())}")
        try:
            raw = await fb.call("batch", {"halt": 0, "cmd": as_cmd(commands(ids, "delivered"))}, raw=True)
            block = raw.get("result", raw) if isinstance(raw, dict) else raw
            print(f"per-command error, fast-bitrix24 (raw batch): result_error="
                  f"{block.get('result_error') if isinstance(block, dict) else block!r}")
        except Exception as exc:  # noqa: BLE001 - the point is to show what it does
            print(f"per-command error, fast-bitrix24 (raw batch): raised {type(exc).__name__}: {exc}")
        try:
            await fb.call(UPDATE, [{"CODE": CODE, "MESSAGE_ID": m, "STATUS": "delivered"} for m in ids])
            print("per-command error, fast-bitrix24 (auto-batch): returned")
        except Exception as exc:  # noqa: BLE001
            print(f"per-command error, fast-bitrix24 (auto-batch): raised {type(exc).__name__}, per-item results lost")

        # 429 OPERATION_TIME_LIMIT for 1.5 s.
        portal.block_method("batch", 1.5)
        start = time.perf_counter()
        try:
            await ours.batch(commands(ids[8:], "delivered"))
            print(f"429, ours: waited and succeeded after {time.perf_counter() - start:.1f} s")
        except RestError as exc:
            print(f"429, ours: raised {exc.code}")
        portal.block_method("batch", 1.5)
        start = time.perf_counter()
        try:
            await fb.call("batch", {"halt": 0, "cmd": as_cmd(commands(ids[8:], "delivered"))}, raw=True)
            print(f"429, fast-bitrix24: succeeded after {time.perf_counter() - start:.1f} s")
        except Exception as exc:  # noqa: BLE001
            print(f"429, fast-bitrix24: raised {type(exc).__name__} after {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--batches", type=int, default=300)
    asyncio.run(main(p.parse_args().batches))
