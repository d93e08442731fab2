"""The ``smppd`` command.

Exit codes scripts can rely on: 0 success, 1 the job failed (e.g. the demo
lost a message), 2 bad usage or a bad config, 3 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from . import config as config_mod
from . import logs

DEFAULT_CONFIG = "/etc/smppd/config.toml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    return args.func(args)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smppd", description="SMS gateway between Bitrix24 and SMPP operators.")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file and exit")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    check.set_defaults(func=_check_config)

    status = sub.add_parser("status", help="binds, queues and outbox of the running daemon, as JSON")
    status.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    status.set_defaults(func=_status)

    stop = sub.add_parser("stoplist", help="numbers that opted out of marketing: add, remove, list")
    stop.add_argument("action", choices=("add", "remove", "list"))
    stop.add_argument("numbers", nargs="*", help="phone numbers, any format smppd accepts")
    stop.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    stop.set_defaults(func=_stoplist)

    text_cmd = sub.add_parser("text", help="encoding, segments and cost of an SMS text")
    text_cmd.add_argument("text", help="the message text (quote it), or - to read a template from stdin")
    text_cmd.add_argument("-n", "--recipients", type=int, default=1000,
                          help="broadcast size to price in segments (default 1000)")
    text_cmd.set_defaults(func=_text)

    cost = sub.add_parser("cost", help="price and segment count of a text for some numbers, without sending")
    cost.add_argument("-c", "--config", default=DEFAULT_CONFIG)
    cost.add_argument("--code", required=True, help="the Bitrix24 provider CODE whose route and sender to use")
    cost.add_argument("--text", required=True, help="the message text")
    cost.add_argument("numbers", nargs="+", metavar="NUMBER")
    cost.set_defaults(func=_cost)

    demo = sub.add_parser(
        "demo",
        help="the whole path on loopback: simulated portal and operators, real daemon and shim",
    )
    demo.add_argument("-n", "--messages", type=int, default=300, help="how many messages to post (default 300)")
    demo.add_argument("--concurrency", type=int, default=20, help="posts in flight at once (default 20)")
    demo.add_argument("--seed", type=int, default=7, help="random seed for texts, numbers and outcomes")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for final statuses")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's and shim's log lines")
    demo.set_defaults(func=_demo)
    return p


def _load(path: str) -> config_mod.Config | None:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        print(f"smppd: config error: {e}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    print(f"{args.config}: ok ({len(cfg.routes)} routes, {len(cfg.senders)} senders, {len(cfg.portals)} portals)")
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    logs.configure()
    from .daemon import Daemon

    async def run() -> None:
        daemon = Daemon(cfg)
        await daemon.start()
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        await daemon.stop()

    asyncio.run(run())
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    from .rpc import RpcClient, RpcUnavailable

    async def ask() -> object:
        client = RpcClient(cfg.daemon.socket_path)
        try:
            return await client.call("status")
        finally:
            await client.close()

    try:
        print(json.dumps(asyncio.run(ask()), indent=2, ensure_ascii=False))
    except RpcUnavailable as e:
        print(f"smppd: daemon unreachable at {cfg.daemon.socket_path}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    return EXIT_OK


def _stoplist(args: argparse.Namespace) -> int:
    """Through the daemon, which keeps the list in memory for intake and on disk for good."""
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    if (args.action == "list") == bool(args.numbers):
        print("smppd: stoplist add/remove take numbers, list takes none", file=sys.stderr)
        return EXIT_USAGE
    from .phone import mask
    from .rpc import RpcClient, RpcError, RpcUnavailable

    async def run() -> int:
        client = RpcClient(cfg.daemon.socket_path)
        failed = False
        try:
            if args.action == "list":
                for e in (await client.call("stoplist.list"))["numbers"]:
                    print(f"{e['phone']}\t{e['source']}")
                return EXIT_OK
            for raw in args.numbers:
                try:
                    r = await client.call(f"stoplist.{args.action}", {"phone": raw, "source": "cli"})
                except RpcError as e:
                    print(f"smppd: {mask(raw)}: {e.message}", file=sys.stderr)
                    failed = True
                    continue
                done = r.get("added", r.get("removed"))
                print(f"{r['phone']}\t{args.action + ('ed' if args.action == 'add' else 'd') if done else 'unchanged'}")
            return EXIT_FAILED if failed else EXIT_OK
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except RpcUnavailable as e:
        print(f"smppd: daemon unreachable at {cfg.daemon.socket_path}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


def _text(args: argparse.Namespace) -> int:
    from . import text

    if args.text == "-":
        args.text = sys.stdin.read().removesuffix("\n")
    try:
        c = text.cost(args.text)
    except ValueError as e:
        print(f"smppd: this text cannot be sent as SMS: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.recipients < 1:
        print("smppd: --recipients must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    unit = "septets" if c.encoding == "gsm7" else "UTF-16 units"
    print(f"encoding        {'GSM-7' if c.encoding == 'gsm7' else 'UCS-2'}")
    print(f"length          {c.units} {unit}")
    print(f"segments        {c.segments}")
    print(f"left in last    {c.chars_left} {unit}")
    if c.ucs2_chars:
        print(f"forces UCS-2    {' '.join(repr(ch) for ch in c.ucs2_chars)}")
        without = text.cost("".join(ch for ch in args.text if ch not in c.ucs2_chars) or " ")
        print(f"without them    {without.segments} segment(s) as GSM-7")
    print(f"broadcast       {c.broadcast(args.recipients)} segments for {args.recipients} recipients")
    return EXIT_OK


def _cost(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    from .cost import run_cost

    return run_cost(cfg, args)


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return EXIT_OK if run_demo(args) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
