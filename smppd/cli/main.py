"""The ``smppd`` command.

Exit codes scripts can rely on: 0 success, 1 the job failed (e.g. the demo
lost a message), 2 bad usage or a bad config, 3 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import structlog

from . import admin as admin_cli, contacts as contacts_cli
from .. import config as config_mod
from ..ops import logs

DEFAULT_CONFIG = "/etc/smppd/config.toml"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        code: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        return _reader_went_away()
    return code


def _reader_went_away() -> int:
    """``smppd stuck | head``: the reader closed the pipe, which is its right, not our failure.

    Python would print a BrokenPipeError traceback, and another one when it
    flushes stdout at exit; pointing stdout at /dev/null makes that final
    flush quiet (the recipe in the ``signal`` module's documentation).  The
    exit code is the shell's for a command killed by SIGPIPE.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + 13


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smppd", description="SMS gateway between Bitrix24 and SMPP operators.")
    sub = p.add_subparsers(metavar="COMMAND")

    run = sub.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    run.set_defaults(func=_run)

    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config file: prints ok, or the key that is wrong (exit 2).")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    check.add_argument("--env-file", help="read the ${NAME} secrets from this file first (e.g. /etc/smppd/secrets.env)")
    check.add_argument("--callback-urls", action="store_true",
                       help="print each HTTP route's callback URL whole, key included, to give the provider")
    check.set_defaults(func=_check_config)

    admin_cli.add_commands(sub, DEFAULT_CONFIG)  # status, send, stuck, retry, cancel, report
    contacts_cli.add_commands(sub, DEFAULT_CONFIG)  # contacts scan | normalize (issue 16)

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

    for name, text in (("register", "register every configured CODE as an SMS provider in each installed portal"),
                       ("unregister", "remove our CODEs from each installed portal")):
        reg = sub.add_parser(name, help=text)
        reg.add_argument("-c", "--config", default=DEFAULT_CONFIG)
        reg.add_argument("--portal", metavar="MEMBER_ID", help="only this portal")
        if name == "register":
            reg.add_argument("--update", action="store_true",
                             help="also rewrite HANDLER/NAME of CODEs already there (after a new handler_key)")
        reg.set_defaults(func=_registration, method=name)

    demo = sub.add_parser(
        "demo",
        help="the whole path on loopback: simulated portal and operators, real daemon and shim",
    )
    demo.add_argument("-n", "--messages", type=int, default=300, help="how many messages to post (default 300)")
    demo.add_argument("--concurrency", type=int, default=20, help="posts in flight at once (default 20)")
    demo.add_argument("--seed", type=int, default=7, help="random seed for texts, numbers and outcomes")
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for final statuses")
    demo.add_argument("--verbose", action="store_true", help="show the daemon's and shim's log lines")
    demo.add_argument("--contacts", type=int, default=0, metavar="N",
                      help="instead of messages: a generated CRM of N contacts through smppd contacts "
                           "(scan, normalize --apply, normalize again)")
    demo.set_defaults(func=_demo)
    return p


def _load(path: str) -> config_mod.Config | None:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as e:
        print(f"smppd: config error: {e}", file=sys.stderr)
        return None


def _check_config(args: argparse.Namespace) -> int:
    if args.env_file:
        try:
            os.environ.update(config_mod.read_env_file(args.env_file))
        except config_mod.ConfigError as e:
            print(f"smppd: config error: {e}", file=sys.stderr)
            return EXIT_USAGE
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    print(f"{args.config}: ok ({len(cfg.routes)} routes, {len(cfg.senders)} senders, {len(cfg.portals)} portals)")
    for line in _callback_lines(cfg, whole=args.callback_urls):
        print(line)
    return EXIT_OK


def _callback_lines(cfg: config_mod.Config, *, whole: bool) -> list[str]:
    """What each HTTP route's provider must be given, or why it has no callback door.

    The key is printed only when asked (``--callback-urls``): check-config's
    output ends up in deploy logs, and the key is what opens the door.  The
    handler key never opens ``/dlr/`` (issue 18), so a route without its own
    ``callback_key`` gets its statuses by polling only.
    """
    from urllib.parse import quote

    base = (cfg.shim.public_url or "https://YOUR-HOST").rstrip("/")
    out = []
    for name, route in cfg.routes.items():
        if not isinstance(route, config_mod.HttpRouteConfig):
            continue
        key = route.callback_key
        url = f"{base}/dlr/{quote(name, safe='')}?key="
        if not key:
            out.append(f"route {name}: no callback_key, so /dlr/{name} is closed and statuses come by polling "
                       f"(poll_after = {route.poll_after:g} s); set route.{name}.callback_key "
                       "to receive the provider's callbacks")
        elif whole:
            out.append(f"route {name}: callback URL {url}{quote(key, safe='')}")
        else:
            out.append(f"route {name}: callback URL {url}<route.{name}.callback_key> "
                       "(--callback-urls prints it whole)")
    return out


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    logs.configure()
    from .run import run_daemon
    from ..store import StoreOpenError

    try:
        return EXIT_OK if asyncio.run(run_daemon(cfg, args.config)) else EXIT_FAILED
    except StoreOpenError as e:
        # Exit 2: restarting cannot help (systemd's RestartPreventExitStatus=2): a read-only
        # mount, a directory not ours. A full disk is exit 1: systemd starts it again later.
        structlog.get_logger("smppd.cli.run").error("store_open_failed", path=e.path, problem=e.problem)
        return EXIT_FAILED if e.retry else EXIT_USAGE


def _stoplist(args: argparse.Namespace) -> int:
    """Through the daemon, which keeps the list in memory for intake and on disk for good."""
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    if (args.action == "list") == bool(args.numbers):
        print("smppd: stoplist add/remove take numbers, list takes none", file=sys.stderr)
        return EXIT_USAGE
    from ..phone import mask
    from ..rpc import RpcClient, RpcError, RpcUnavailable

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
    from .. import text

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


def _registration(args: argparse.Namespace) -> int:
    """Ask the daemon: it holds the tokens, and one refresh in flight per portal needs one owner."""
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    from ..rpc import RpcClient, RpcError, RpcUnavailable

    async def ask() -> object:
        client = RpcClient(cfg.daemon.socket_path, timeout=120)
        try:
            params: dict[str, object] = {"portal": args.portal} if args.portal else {}
            if getattr(args, "update", False):
                params["update"] = True
            return await client.call(args.method, params)
        finally:
            await client.close()

    try:
        result = asyncio.run(ask())
    except RpcUnavailable as e:
        print(f"smppd: daemon unreachable at {cfg.daemon.socket_path}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except RpcError as e:
        print(f"smppd: {e.message}", file=sys.stderr)
        return EXIT_USAGE if e.code == "bad_request" else EXIT_FAILED
    reports = result.get("portals", []) if isinstance(result, dict) else []
    if not reports:
        print("smppd: no installed portal; install the local app first (README)", file=sys.stderr)
        return EXIT_FAILED
    for r in reports:
        if r is None:
            continue
        done = r["added"] if args.method == "register" else r["removed"]
        verb = "added" if args.method == "register" else "removed"
        print(f"{r['domain']}: {verb} {', '.join(done) or 'nothing'}"
              + (f"; already there: {', '.join(r['present'])}" if r.get("present") else "")
              + (f"; updated: {', '.join(r['updated'])}" if r.get("updated") else ""))
        for code, text in r["errors"].items():
            print(f"{r['domain']}: {code if code != '*' else 'error'}: {text}", file=sys.stderr)
    return EXIT_OK if all(r and r["ok"] for r in reports) else EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return EXIT_OK if run_demo(args) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
