"""The admin subcommands of ``smppd``: status, send, stuck, retry, cancel, report.

Exit codes, the same for every command so scripts can rely on them:

    0  done (status: every bind is up; send: the message was delivered)
    1  the job failed (status: a bind is down; send: failed, undelivered or
       no final status in time; retry/cancel: nothing matched)
    2  bad usage or a bad config
    3  the daemon is unreachable
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, Callable

from .. import config as config_mod
from . import report as report_mod
from ..model import FINAL, OPEN, Status
from ..rpc import RpcClient, RpcError, RpcUnavailable
from ..store.reader import read_errors, redact

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3


def add_commands(sub: Any, default_config: str) -> None:
    """Add the admin subcommands to ``smppd``'s subparsers."""

    def command(name: str, help: str, func: Callable[[argparse.Namespace], int],
                description: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description or help,
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="exit codes: 0 ok, 1 failed, 2 bad usage or config, 3 daemon unreachable")
        p.add_argument("-c", "--config", default=default_config, help=f"config file (default {default_config})")
        p.set_defaults(func=func)
        return p

    p = command("status", "binds, queues, window and outbox per route and portal", status,
                "Show the running daemon's binds, queues, window and Bitrix24 outbox.\n"
                "Exits 0 when every bind is up, 1 when one is down.")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    p = command("send", "send a test message through the real path and wait for its receipt", send,
                "Send a test message through intake, the store and the route, exactly like a\n"
                "Bitrix24 post, and wait for its final status. Exits 0 only when it is delivered.")
    p.add_argument("--code", required=True, help="a [sender.CODE] of the config")
    p.add_argument("--to", required=True, metavar="NUMBER", help="phone number, e.g. +375291234567")
    p.add_argument("text", help="message text")
    p.add_argument("--wait", type=_seconds, default=120.0, metavar="DURATION",
                   help="how long to wait for the final status (default 120s; 0 = do not wait)")

    p = command("stuck", "list messages without a final status for a while", stuck)
    p.add_argument("--for", dest="older_than", type=_seconds, default=3600.0, metavar="DURATION",
                   help="unchanged for at least this long (default 1h; e.g. 30m, 2d)")
    p.add_argument("--route", help="only this route")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")

    for name, func, what in (
        ("retry", retry, "queue again the segments the operator never took (never resends an accepted one)"),
        ("cancel", cancel, "fail stuck messages for good, in the store and in Bitrix24"),
    ):
        p = command(name, what, func)
        p.add_argument("ids", nargs="*", type=int, metavar="ID", help="message ids (see `smppd stuck`)")
        p.add_argument("--stuck-for", dest="older_than", type=_seconds, metavar="DURATION",
                       help="every message unchanged for this long (e.g. 1h)")
        p.add_argument("--route", help="only this route")
        if name == "retry":
            p.add_argument("--outbox", action="store_true",
                           help="also push every pending Bitrix24 status update now")

    p = command("report", "per route and day: sent, delivered, failed, ratio, segments, time to deliver", report,
                "Per route and day: sent, delivered, undelivered, failed, pending, segments,\n"
                "delivery ratio (delivered / final) and median time to deliver. Reads the\n"
                "database directly (works with the daemon stopped; needs read access to it).")
    p.add_argument("--since", type=_seconds, default=7 * 86400.0, metavar="DURATION",
                   help="messages received in the last DURATION (default 7d)")
    p.add_argument("--utc", action="store_true", help="days in UTC (default: the machine's time zone)")
    p.add_argument("--json", action="store_true", help="print JSON (for scripts)")


def _seconds(text: str) -> float:
    try:
        return report_mod.parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _config(args: argparse.Namespace) -> config_mod.DaemonConfig | None:
    try:
        return config_mod.load_daemon(args.config)
    except config_mod.ConfigError as e:
        print(f"smppd: config error: {e}", file=sys.stderr)
        return None


def _call(args: argparse.Namespace, work: Callable[[RpcClient], Any]) -> tuple[int, Any]:
    """Run ``work`` against the daemon; maps failures to the documented exit codes."""
    cfg = _config(args)
    if cfg is None:
        return EXIT_USAGE, None

    async def run() -> Any:
        client = RpcClient(cfg.socket_path, timeout=30.0)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return EXIT_OK, asyncio.run(run())
    except RpcUnavailable as e:
        print(f"smppd: daemon unreachable at {cfg.socket_path}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE, None
    except RpcError as e:
        print(f"smppd: {e.message}", file=sys.stderr)
        return (EXIT_USAGE if e.code in ("bad_request", "unknown_code", "not_found") else EXIT_FAILED), None


# --- status --------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    code, st = _call(args, lambda c: c.call("status"))
    if code != EXIT_OK:
        return code
    # Several nodes: a route another node owns is not down here (its owner's status says).
    node = st.get("cluster", {}).get("node")
    down = [name for name, r in st["routes"].items() if not r.get("up") and r.get("owner", node) == node]
    down += ["store"] if st.get("store", {}).get("unavailable") else []  # a full disk: posts get 503
    if args.json:
        print(json.dumps(st, indent=2, ensure_ascii=False))
    else:
        print(render_status(st))
    return EXIT_FAILED if down else EXIT_OK


def render_status(st: dict[str, Any]) -> str:
    messages = st.get("store", {}).get("messages", {})
    lines = ["route     bind   queue  window    submitted  accepted  rejected  receipts  open  delivered  not delivered"]
    for name, r in st["routes"].items():
        m = messages.get(name, {})
        open_ = sum(m.get(s, 0) for s in OPEN)
        failed = sum(m.get(s, 0) for s in FINAL if s != Status.DELIVERED)
        # An HTTP route has no window (its requests carry batches) and names its figures as
        # the provider does: requests sent, messages refused, callbacks and polls.
        size = r.get("window", r.get("window_size"))
        window = f"{r.get('inflight', '?')}/{'-' if size is None else size}"
        submitted = r.get("submitted", r.get("requests", 0))
        rejected = r.get("rejected", r.get("refused", 0))
        receipts = r.get("receipts", r.get("callbacks", 0) + r.get("polled", 0))
        node = st.get("cluster", {}).get("node")
        bind = ("up" if r.get("up") else "DOWN") if r.get("owner", node) == node else f"@{r.get('owner') or '-'}"
        lines.append(
            f"{name:<9} {bind:<6} {r.get('queue', 0):>5}  {window:>6}"
            f"  {submitted:>11}  {r.get('accepted', 0):>8}  {rejected:>8}"
            f"  {receipts:>8}  {open_:>4}  {m.get(Status.DELIVERED, 0):>9}  {failed:>13}"
        )
        if r.get("trouble"):
            lines.append(f"          {r['trouble']}")
    lines.append("")
    lines.append("portal                            outbox  oldest  pushed  dropped")
    for member_id, p in st.get("pushers", {}).items():
        lines.append(f"{member_id[:32]:<32} {p.get('updates', 0):>7}  {p.get('oldest_seconds', 0):>5.0f}s"
                     f"  {p.get('pushed', 0):>6}  {p.get('dropped', 0):>7}")
    store = st.get("store", {})
    lines.append("")
    lines.append(f"receipts waiting for their resp: {store.get('receipts_pending', 0)},"
                 f" never matched: {store.get('receipts_unmatched', 0)}")
    if store.get("unavailable"):
        lines.append(f"STORE CANNOT WRITE (posts get 503, receipts wait): {store['unavailable']}")
    if "cluster" in st:
        lines += ["", *render_cluster(st["cluster"])]
    return "\n".join(lines)


def render_cluster(c: dict[str, Any]) -> list[str]:
    """Who owns which route and portal (README "Two machines"); "@node" in the route table."""
    lines = [f"this node: {c.get('node')}   lease changes here: {c.get('lease_changes', {})}",
             "lease                             owner            token  expires in  held for"]
    for row in c.get("leases", []):
        owner = row["node"] if row.get("live") else f"(none; was {row['node']})"
        lines.append(f"{row['name'][:33]:<33} {owner[:16]:<16} {row['token']:>5}  {row['expires_in']:>9.1f}s"
                     f"  {row['held_for']:>7.0f}s")
    if not c.get("leases"):
        lines.append("(the lease table cannot be read now)")
    return lines


# --- send ----------------------------------------------------------------------------


def send(args: argparse.Namespace) -> int:
    async def work(client: RpcClient) -> tuple[dict[str, Any], dict[str, Any] | None, float]:
        started = time.monotonic()
        sent = await client.call("send", {"code": args.code, "to": args.to, "text": args.text})
        print(f"message {sent['id']} stored as {sent['status']} on route {sent['route']}"
              f" (Bitrix24-style id {sent['b24_id']})", flush=True)
        if sent["status"] in FINAL or args.wait <= 0:
            return sent, None, 0.0
        deadline = started + args.wait
        while True:
            m = await client.call("message", {"id": sent["id"]})
            if m["status"] in FINAL or time.monotonic() >= deadline:
                return sent, m, time.monotonic() - started
            await asyncio.sleep(0.2)

    code, result = _call(args, work)
    if code != EXIT_OK:
        return code
    sent, m, took = result
    if m is None:
        if sent["status"] in FINAL:
            print(f"{sent['status']}: {sent.get('reason') or ''}".rstrip(": "))
            return EXIT_OK if sent["status"] == Status.DELIVERED else EXIT_FAILED
        return EXIT_OK
    ids = ", ".join(f"{s['seq']}:{s['smsc_id']}" for s in m["segments"] if s["smsc_id"]) or "none"
    if m["status"] not in FINAL:
        print(f"still {m['status']} after {took:.1f} s (SMSC ids {ids}); `smppd stuck` shows it later")
        return EXIT_FAILED
    reason = f" ({m['reason']})" if m.get("reason") else ""
    print(f"{m['status']}{reason} after {took:.1f} s, to {m['to']}, SMSC ids {ids}")
    return EXIT_OK if m["status"] == Status.DELIVERED else EXIT_FAILED


# --- stuck, retry, cancel --------------------------------------------------------------


def stuck(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"older_than": args.older_than}
    if args.route:
        params["route"] = args.route
    code, rows = _call(args, lambda c: c.call("stuck", params))
    if code != EXIT_OK:
        return code
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print("no stuck messages")
    else:
        print("id        route     status     unchanged for  waiting for")
        for r in rows:
            print(f"{r['id']:<9} {r['route']:<9} {r['status']:<10} {report_mod._duration(r['age_seconds']):<14}"
                  f" {r.get('waiting', '')}")
    return EXIT_OK


def _selection(args: argparse.Namespace) -> dict[str, Any] | None:
    params: dict[str, Any] = {"ids": args.ids}
    if args.older_than is not None:
        params["older_than"] = args.older_than
    if args.route:
        params["route"] = args.route
    if getattr(args, "outbox", False):
        params["outbox"] = True
    if not args.ids and args.older_than is None and not params.get("outbox"):
        print("smppd: name message ids or --stuck-for DURATION", file=sys.stderr)
        return None
    return params


def retry(args: argparse.Namespace) -> int:
    params = _selection(args)
    if params is None:
        return EXIT_USAGE
    code, r = _call(args, lambda c: c.call("retry", params))
    if code != EXIT_OK:
        return code
    print(f"queued again: {len(r['requeued'])} of {r['selected']} selected messages"
          + (f" ({', '.join(map(str, r['requeued']))})" if r["requeued"] else ""))
    if params.get("outbox"):
        print(f"Bitrix24 updates made due now: {r['outbox']}")
    return EXIT_OK if r["requeued"] or r["outbox"] else EXIT_FAILED


def cancel(args: argparse.Namespace) -> int:
    params = _selection(args)
    if params is None:
        return EXIT_USAGE
    code, r = _call(args, lambda c: c.call("cancel", params))
    if code != EXIT_OK:
        return code
    print(f"cancelled: {len(r['cancelled'])}" + (f" ({', '.join(map(str, r['cancelled']))})" if r["cancelled"] else ""))
    return EXIT_OK if r["cancelled"] else EXIT_FAILED


# --- report ----------------------------------------------------------------------------


def report(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if cfg is None:
        return EXIT_USAGE
    try:
        rows = report_mod.daily(cfg.database, args.since, utc=args.utc)
    except read_errors() as e:
        print(f"smppd: cannot read {redact(cfg.database)}: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps([r.as_dict() for r in rows], indent=2))
    elif not rows:
        print("no messages in that period")
    else:
        print(report_mod.render(rows))
    return EXIT_OK
