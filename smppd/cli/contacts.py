"""``smppd contacts scan | normalize [--apply] | cost | hlr``: the CRM's phone numbers before a campaign.

The work runs in the daemon (it holds the portal's tokens and REST budget, shared with the
status pusher, which goes first); this command starts a job there, draws its progress on a
terminal and prints the report: a table on screen, ``--json`` or ``--csv`` for the rest.
Exit codes as every ``smppd`` command: 0 done, 1 the job failed, 2 bad usage, 3 no daemon.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys
from typing import Any, TextIO

from .. import config as config_mod
from ..rpc import RpcClient, RpcError, RpcUnavailable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
POLL = 0.5
PAGE = 5000
SCREEN_ROWS = 20  # lines of each list in the on-screen table; --json/--csv have them all
LISTS = {"scan": ("invalid", "shared"), "normalize": ("changes", "invalid", "failed")}
HEADERS = {"invalid": ["entity", "id", "value", "reason"], "shared": ["number", "entities"],
           "changes": ["entity", "id", "stored", "e164"], "failed": ["entity", "id", "error"]}


def add_commands(sub: Any, default_config: str) -> None:
    p = sub.add_parser("contacts", help="scan or normalize the CRM's phone numbers (before a campaign)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(metavar="ACTION")
    for name, text in (("scan", "count the numbers: valid per country and prefix, not E.164, invalid, shared"),
                       ("normalize", "write numbers back in E.164 and mark invalid ones (dry run without --apply)")):
        a = actions.add_parser(name, help=text, description=text)
        a.add_argument("-c", "--config", default=default_config, help=f"config file (default {default_config})")
        a.add_argument("--portal", metavar="MEMBER_ID", help="the portal (needed when several are installed)")
        a.add_argument("--entities", default="contact,lead,company",
                       help="which CRM entities, comma-separated (default contact,lead,company)")
        _filter_arg(a)
        out = a.add_mutually_exclusive_group()
        out.add_argument("--json", action="store_true", help="print the whole report as JSON")
        out.add_argument("--csv", action="store_true", help="print the lists as CSV (kind,...)")
        if name == "normalize":
            a.add_argument("--apply", action="store_true", help="write the changes (default: only show them)")
        a.set_defaults(func=run, action=name)
    c = actions.add_parser("cost", help="price a broadcast to the CRM's valid numbers through a CODE's route, "
                                        "without sending", description="Read the CRM's numbers (as scan does), then "
                           "ask the CODE's provider what the text would cost (SMS.ru sms/cost, SMSC.ru cost=1) and "
                           "which numbers it would refuse. Nothing is sent.")
    c.add_argument("-c", "--config", default=default_config, help=f"config file (default {default_config})")
    c.add_argument("--portal", metavar="MEMBER_ID", help="the portal (needed when several are installed)")
    c.add_argument("--entities", default="contact,lead,company", help="which CRM entities (default all three)")
    _filter_arg(c)
    c.add_argument("--code", required=True, help="the Bitrix24 provider CODE whose route and sender to price")
    c.add_argument("--text", required=True, help="the message text")
    c.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    c.set_defaults(func=run, action="cost", csv=False)
    h = actions.add_parser("hlr", help="check the valid numbers by HLR through a CODE's SMSC.ru route (paid)",
                           description="Check the CRM's valid numbers by HLR through the SMSC.ru route of a CODE: "
                           "prints the count and the price and asks first; writes UF_CRM_OPERATOR, UF_CRM_REGION "
                           "and UF_CRM_SMS_REACHABLE (created if missing). Results are kept per number, so a "
                           "rerun within --cache-days does not pay twice.")
    h.add_argument("-c", "--config", default=default_config, help=f"config file (default {default_config})")
    h.add_argument("--portal", metavar="MEMBER_ID", help="the portal (needed when several are installed)")
    h.add_argument("--entities", default="contact,lead,company", help="which CRM entities (default all three)")
    _filter_arg(h)
    h.add_argument("--code", required=True, help="a CODE whose route is SMSC.ru")
    h.add_argument("--cache-days", type=float, default=30.0, help="reuse results this recent (default 30)")
    h.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    h.add_argument("--json", action="store_true", help="print the summary as JSON")
    h.set_defaults(func=run, action="hlr", csv=False)
    p.set_defaults(func=lambda args: (p.print_help(), EXIT_USAGE)[1])


def _filter_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--filter", action="append", default=[], metavar="FIELD=VALUE",
                   help="only rows matching this crm.*.list filter (repeatable; prefixes as Bitrix24's: "
                        "TYPE_ID=CLIENT, >=DATE_CREATE=2026-01-01, UF_CRM_SMS_INVALID=0)")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as e:
        print(f"smppd: config error: {e}", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "cost" and args.code not in cfg.senders:
        print(f"smppd: no sender with code {args.code!r}", file=sys.stderr)
        return EXIT_USAGE
    params: dict[str, Any] = {"action": "scan" if args.action == "cost" else args.action, "apply": bool(getattr(args, "apply", False)),
                              "entities": [e.strip() for e in args.entities.split(",") if e.strip()]}
    if args.portal:
        params["portal"] = args.portal
    if args.filter:
        if not all("=" in f.lstrip("<>=!") for f in args.filter):
            print("smppd: --filter takes FIELD=VALUE", file=sys.stderr)
            return EXIT_USAGE
        params["filter"] = dict(_split_filter(f) for f in args.filter)
    if args.action == "hlr":
        params.update(code=args.code, cache_ttl=args.cache_days * 86400)
    try:
        if args.action == "hlr":
            return asyncio.run(drive_hlr(cfg.daemon.socket_path, params, args, sys.stdout, sys.stderr))
        if args.action == "cost":
            return asyncio.run(drive_cost(cfg, params, args, sys.stdout, sys.stderr))
        return asyncio.run(drive(cfg.daemon.socket_path, params, args, sys.stdout, sys.stderr))
    except RpcUnavailable as e:
        print(f"smppd: daemon unreachable at {cfg.daemon.socket_path}: {e}", file=sys.stderr)
        return EXIT_UNREACHABLE


async def _follow(client: RpcClient, params: dict[str, Any], err: TextIO) -> tuple[str, dict[str, Any]] | int:
    """Start the job and wait for its end, drawing progress on a terminal; an exit code if refused."""
    try:
        started = await client.call("contacts.start", params)
    except RpcError as e:
        print(f"smppd: {e.message}", file=err)
        return EXIT_USAGE if e.code == "bad_request" else EXIT_FAILED
    job = started["job"]
    if started.get("resumed"):
        where = ", ".join(f"{k} after id {v}" for k, v in started["resumed"].items())
        print(f"resuming an interrupted run: {where}", file=err)
    return job, await _watch(client, job, err)


async def _watch(client: RpcClient, job: str, err: TextIO) -> dict[str, Any]:
    """Until the job is no longer running (done, failed, or waiting for a confirmation)."""
    tty = err.isatty()
    while True:
        state = await client.call("contacts.job", {"job": job})
        if tty:
            err.write("\r" + _bar(state["progress"]))
            err.flush()
        if state["state"] != "running":
            break
        await asyncio.sleep(POLL)
    if tty:
        err.write("\n")
    return state


async def drive_hlr(socket_path: str, params: dict[str, Any], args: argparse.Namespace,
                    out: TextIO, err: TextIO, ask: Any = input) -> int:
    """Scan, show the count and the price, ask (or --yes), check, write back."""
    client = RpcClient(socket_path, timeout=30)
    try:
        followed = await _follow(client, params, err)
        if isinstance(followed, int):
            return followed
        job, state = followed
        if state["state"] == "confirm":
            q = state["quote"]
            print(f"HLR: {q['to_check']} numbers to check ({q['cached']} known from the last "
                  f"{params.get('cache_ttl', 0) / 86400:g} days, not paid again), price {q['price']:.2f}", file=err)
            if not args.yes and (not q["to_check"] or ask("proceed? [y/N] ").strip().lower() not in ("y", "yes")):
                if q["to_check"]:
                    await client.call("contacts.cancel", {"job": job})
                    print("smppd: not confirmed, nothing was checked", file=err)
                    return EXIT_FAILED
            await client.call("contacts.confirm", {"job": job})
            state = await _watch(client, job, err)
    finally:
        await client.close()
    if state["state"] != "done":
        print(f"smppd: the job failed: {state.get('error')}", file=err)
        return EXIT_FAILED
    summary = state["summary"]
    if args.json:
        json.dump(summary, out)
        out.write("\n")
        return EXIT_OK
    h = summary.get("hlr", {})
    out.write(f"numbers           {summary['valid']} valid ({summary['invalid']} invalid, not checked)\n")
    out.write(f"checked now       {h.get('checked', 0)} ({h.get('reachable', 0)} reachable), "
              f"{h.get('unanswered', 0)} without an answer in time\n")
    out.write(f"from the cache    {h.get('cached', 0)}\n")
    out.write(f"price             {h.get('price', 0):.2f}\n")
    out.write(f"entities written  {summary['updated']} (UF_CRM_OPERATOR, UF_CRM_REGION, UF_CRM_SMS_REACHABLE), "
              f"failed {summary['failed']}\n")
    return EXIT_OK


async def drive_cost(cfg: config_mod.Config, params: dict[str, Any], args: argparse.Namespace,
                     out: TextIO, err: TextIO) -> int:
    """Read the numbers through the daemon, then price them at the provider, 100 a request
    (SMS.ru takes at most 100 numbers per request, providers.md §1)."""
    from .cost import quote
    from ..http_client import Ambiguous, Unavailable
    from ..routes.answers import ProviderError

    client = RpcClient(cfg.daemon.socket_path, timeout=30)
    try:
        followed = await _follow(client, params, err)
        if isinstance(followed, int):
            return followed
        job, state = followed
        if state["state"] != "done":
            print(f"smppd: reading the CRM failed: {state.get('error')}", file=err)
            return EXIT_FAILED
        _, numbers = await _all_rows(client, job, "numbers", None)
    finally:
        await client.close()
    totals = {"numbers": len(numbers), "invalid_in_crm": state["summary"]["invalid"], "refused": 0,
              "sms": 0, "cost": None}
    refused: list[list[str]] = []
    cost = 0.0
    try:
        for i in range(0, len(numbers), 100):
            chunk = [n[0] for n in numbers[i:i + 100]]
            try:
                q = await quote(cfg, args.code, args.text, chunk)
            except ProviderError as e:
                if e.code != 7:  # SMSC.ru: every number of the request is invalid
                    raise
                refused += [[n, f"SMSC.ru error {e.code}"] for n in chunk]
                continue
            refused += [[n, note] for n, parts, _, note in q.rows if parts is None]
            totals["sms"] += q.total_sms or 0
            if q.total_cost is not None:
                cost += q.total_cost
                totals["cost"] = round(cost, 2)
    except ProviderError as e:
        print(f"smppd: the provider refused: {e}", file=err)
        return EXIT_FAILED
    except (Unavailable, Ambiguous) as e:
        print(f"smppd: provider unreachable: {e}", file=err)
        return EXIT_UNREACHABLE
    totals["refused"] = len(refused)
    if args.json:
        json.dump({**totals, "refused_numbers": refused}, out)
        out.write("\n")
        return EXIT_OK
    route = cfg.senders[args.code].route
    out.write(f"route             {route} (CODE {args.code})\n")
    out.write(f"valid numbers     {totals['numbers']} (and {totals['invalid_in_crm']} invalid in the CRM, not priced)\n")
    out.write(f"provider refuses  {totals['refused']}\n")
    out.write(f"SMS parts         {totals['sms']}\n")
    price = "no price API (SMPP)" if totals["cost"] is None else f"{totals['cost']:.2f}"
    out.write(f"cost              {price}\n")
    for n, note in refused[:SCREEN_ROWS]:
        out.write(f"  {n}  {note}\n")
    return EXIT_OK


def _split_filter(text: str) -> tuple[str, str]:
    """``>=DATE_CREATE=2026-01-01`` -> (``>=DATE_CREATE``, ``2026-01-01``): the operator prefix
    belongs to the field, the first ``=`` after it separates the value."""
    head = len(text) - len(text.lstrip("<>=!@%"))
    field, _, value = text[head:].partition("=")
    return text[:head] + field, value


async def drive(socket_path: str, params: dict[str, Any], args: argparse.Namespace,
                out: TextIO, err: TextIO) -> int:
    """Start the job, follow it, print its report. Separate from `run` so tests call it in-process."""
    client = RpcClient(socket_path, timeout=30)
    try:
        followed = await _follow(client, params, err)
        if isinstance(followed, int):
            return followed
        job, state = followed
        lists = {kind: await _all_rows(client, job, kind, None if (args.json or args.csv) else SCREEN_ROWS)
                 for kind in LISTS[params["action"]]}
    finally:
        await client.close()
    if args.json:
        json.dump({"state": state["state"], "error": state.get("error"), "summary": state["summary"],
                   "progress": state["progress"], **{k: v[1] for k, v in lists.items()}}, out, ensure_ascii=False)
        out.write("\n")
    elif args.csv:
        writer = csv.writer(out)
        for kind, (_, rows) in lists.items():
            writer.writerow(["kind", *HEADERS[kind]])
            writer.writerows([kind, *r] for r in rows)
    else:
        _table(out, params, state, lists)
    if state["state"] != "done":
        print(f"smppd: the job failed: {state.get('error')}", file=err)
        return EXIT_FAILED
    return EXIT_OK


async def _all_rows(client: RpcClient, job: str, kind: str, cap: int | None) -> tuple[int, list[list[Any]]]:
    rows: list[list[Any]] = []
    total = 0
    while cap is None or len(rows) < cap:
        limit = PAGE if cap is None else min(PAGE, cap - len(rows))
        page = await client.call("contacts.rows", {"job": job, "kind": kind, "offset": len(rows), "limit": limit})
        total = page["total"]
        rows += page["rows"]
        if not page["rows"] or len(rows) >= total:
            break
    return total, rows


def _bar(p: dict[str, Any], width: int = 30) -> str:
    total, done = p.get("total") or 0, p.get("done") or 0
    filled = int(width * min(1.0, done / total)) if total else 0
    eta = p.get("eta")
    eta_text = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else "ETA --:--"
    return (f"{p.get('phase', ''):<12} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
            f"{p.get('per_minute', 0)}/min {eta_text}   ")


def _table(out: TextIO, params: dict[str, Any], state: dict[str, Any],
           lists: dict[str, tuple[int, list[list[Any]]]]) -> None:
    s, p = state["summary"], state["progress"]
    w = out.write
    w(f"entities read     {sum(s['entities'].values())} ({', '.join(f'{k} {v}' for k, v in s['entities'].items())})\n")
    w(f"numbers           {s['numbers']}\n")
    w(f"valid             {s['valid']}\n")
    for country, n in s["by_country"].items():
        w(f"  {country:<16}{n}\n")
    for prefix, n in s["by_prefix"].items():
        w(f"    {prefix:<22}{n}\n")
    w(f"not in E.164      {s['differs_from_e164']}\n")
    w(f"invalid           {s['invalid']}\n")
    w(f"shared numbers    {s['shared_numbers']} (the same number on several entities)\n")
    if params["action"] == "normalize":
        verb = "written" if params["apply"] else "would be written (dry run: add --apply)"
        w(f"changes           {s['changes']} numbers {verb}\n")
        if params["apply"]:
            w(f"entities updated  {s['updated']}, failed {s['failed']}\n")
    w(f"time              {p['elapsed']} s, {p['per_minute']} entities/min, {p['requests']} requests\n")
    for kind, (total, rows) in lists.items():
        if not total:
            continue
        w(f"\n{kind} ({total}{', first ' + str(len(rows)) if len(rows) < total else ''}):\n")
        for r in rows:
            w("  " + "  ".join(str(x) for x in r) + "\n")
