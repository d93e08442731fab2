"""The ``smppd`` command.

Exit codes scripts can rely on: 0 success, 1 the job failed (e.g. the demo
lost a message), 2 bad usage or a bad config, 3 the daemon is unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

from . import admin_cli
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

    check = sub.add_parser("check-config", help="validate a config file and exit",
                           description="Validate a config file: prints ok, or the key that is wrong (exit 2).")
    check.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    check.add_argument("--env-file", help="read the ${NAME} secrets from this file first (e.g. /etc/smppd/secrets.env)")
    check.set_defaults(func=_check_config)

    admin_cli.add_commands(sub, DEFAULT_CONFIG)  # status, send, stuck, retry, cancel, report

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
    return EXIT_OK


def _run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_USAGE
    logs.configure()
    from .service import run_daemon

    return EXIT_OK if asyncio.run(run_daemon(cfg, args.config)) else EXIT_FAILED


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return EXIT_OK if run_demo(args) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
