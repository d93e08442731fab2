"""Attacks tried against the real ``smppd run`` + ``smppd-shim`` (issue 18 §2, §5).

Drives the two processes from outside (tests/rigs/doors_rig.py: simulated portal, SMSC and
SMS.ru in this process) as an attacker holding one captured HANDLER post and the
callback URL would, and counts what got through. A case is *accepted* when it was
answered 2xx, or stored a message, or moved a message's status; every attack row must
show 0. Genuine posts are tried alongside as the control: all of them must be accepted.

    python bench/attacks.py              # 63 cases per attack (the issue's count)
    python bench/attacks.py --cases 10   # a quick run

Prints a Markdown table for BENCHMARKS.md ("Attacks tried").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.rigs.doors_rig import DoorsRig, start_doors, stop_doors  # noqa: E402


def _set(form: list[tuple[str, str]], **fields: str | None) -> list[tuple[str, str]]:
    names = {(f"auth[{k[5:]}]" if k.startswith("auth_") else k): v for k, v in fields.items()}
    out = [(k, names[k]) if k in names else (k, v) for k, v in form if names.get(k, "") is not None]
    out += [(k, v) for k, v in names.items() if v is not None and k not in dict(form)]
    return out


class Drill:
    def __init__(self, rig: DoorsRig, cases: int, seed: int) -> None:
        self.rig = rig
        self.cases = cases
        self.rng = random.Random(seed)
        self.rows: list[tuple[str, int, int]] = []
        self.controls: set[str] = set()  # rows of genuine traffic: every case must be accepted
        self._n = 0

    def number(self) -> str:
        self._n += 1
        return f"+37529{1_000_000 + self._n}"

    def genuine(self, **kw: object) -> tuple[str, list[tuple[str, str]]]:
        n = self.number()
        return self.rig.genuine(to=n, text=f"order {n} ready", **kw)  # type: ignore[arg-type]

    async def handler_case(self, form: list[tuple[str, str]], b24_id: str, *, url: str | None = None,
                           headers: dict[str, str] | None = None) -> bool:
        status, _ = await self.rig.post(url or self.rig.handler_url(), form, headers=headers)
        return 200 <= status < 300 or self.rig.stored(b24_id)

    async def row(self, name: str, attempt, *, control: bool = False) -> None:  # type: ignore[no-untyped-def]
        if control:
            self.controls.add(name)
        accepted = 0
        for _ in range(self.cases):
            accepted += bool(await attempt())
        self.rows.append((name, self.cases, accepted))
        print(f"  {name}: {accepted}/{self.cases} accepted", file=sys.stderr)

    # --- the attacks --------------------------------------------------------------

    async def forged_token_no_member(self) -> bool:
        b24_id, form = self.genuine()
        token = self.rng.choice([secrets.token_hex(16), "", secrets.token_urlsafe(8)])
        return await self.handler_case(_set(form, auth_member_id=None, auth_application_token=token), b24_id)

    async def forged_token_real_member(self) -> bool:
        b24_id, form = self.genuine()
        return await self.handler_case(_set(form, auth_application_token=secrets.token_hex(16)), b24_id)

    async def unknown_member(self) -> bool:
        b24_id, form = self.genuine()
        return await self.handler_case(_set(form, auth_member_id=secrets.token_hex(16)), b24_id)

    async def stale_ts(self) -> bool:
        b24_id, form = self.genuine()
        now = int(time.time())
        ts = self.rng.choice([self.rng.randint(978307200, now - 86400 - 60),  # 2001 .. yesterday
                              self.rng.randint(now + 86400 + 60, now + 10 * 365 * 86400)])
        return await self.handler_case(_set(form, ts=str(ts)), b24_id)

    async def missing_ts(self) -> bool:
        b24_id, form = self.genuine()
        return await self.handler_case(_set(form, ts=None), b24_id)

    async def replayed_capture(self) -> bool:
        """Yesterday's captured post sent again with another number, text and message id."""
        if not hasattr(self, "_capture"):
            _, form = self.genuine()
            await self.rig.post(self.rig.handler_url(), form)
            self._capture = _set(form, ts=str(int(time.time()) - 86400 - 3600))
        b24_id = secrets.token_hex(16)
        replay = _set(self._capture, message_id=b24_id, message_to=self.number(), message_body="pay here")
        return await self.handler_case(replay, b24_id)

    async def wrong_key(self) -> bool:
        b24_id, form = self.genuine()
        key = self.rng.choice([secrets.token_urlsafe(32), self.rig.key[:-1], self.rig.key + "x", ""])
        door = self.rng.randrange(3)
        if door == 0:
            return await self.handler_case(form, b24_id, url=self.rig.handler_url(key=key))
        if door == 1:
            status, _ = await self.rig.post(self.rig.app_url(key=key), {"event": "ONAPPUNINSTALL"})
            return 200 <= status < 300
        status, _ = await self.rig.post(self.rig.dlr_url(key=key), self.rig.signed_smsru(["sms_status\n1\n103"]))
        return 200 <= status < 300

    async def smsru_unsigned(self) -> bool:
        pid, b24_id = await self.smsru_message()
        record = f"sms_status\n{pid}\n103"
        form = self.rng.choice([{"data[0]": record}, {"data[0]": record, "hash": secrets.token_hex(32)},
                                {"data[0]": record, "hash": ""}])
        status, _ = await self.rig.post(self.rig.dlr_url(), form)
        return 200 <= status < 300 or self.status_of(b24_id) == "delivered"

    async def smsru_message(self) -> tuple[str, str]:
        b24_id, form = self.genuine(code="by_smsru")
        await self.rig.post(self.rig.handler_url("by_smsru"), form)
        deadline = time.monotonic() + 20
        while True:
            with self.rig.db() as conn:
                row = conn.execute("SELECT s.smsc_id FROM segment s JOIN message m ON m.id=s.row_id"
                                   " WHERE m.b24_id=? AND s.smsc_id IS NOT NULL", (b24_id,)).fetchone()
            if row:
                return row[0], b24_id
            if time.monotonic() > deadline:
                raise TimeoutError("SMS.ru never accepted the message")
            await asyncio.sleep(0.02)

    def status_of(self, b24_id: str) -> str | None:
        with self.rig.db() as conn:
            row = conn.execute("SELECT status FROM message WHERE b24_id=?", (b24_id,)).fetchone()
        return row[0] if row else None

    async def not_on_allow_from(self) -> bool:
        b24_id, form = self.genuine()
        outside = f"198.51.100.{self.rng.randrange(1, 255)}"
        headers = self.rng.choice([None, {"X-Forwarded-For": outside},  # direct, via the proxy,
                                   {"X-Forwarded-For": f"203.0.113.5, {outside}"}])  # claiming a listed one
        if self.rng.random() < 0.5:
            return await self.handler_case(form, b24_id, headers=headers)
        status, _ = await self.rig.post(self.rig.app_url(), {"event": "ONAPPUPDATE"}, headers=headers)
        return 200 <= status < 300

    async def without_auth_refused(self) -> bool:
        b24_id, form = self.genuine(author=False)
        return await self.handler_case(form, b24_id)

    async def old_key_after_rotation(self) -> bool:
        b24_id, form = self.genuine()
        door = self.rng.randrange(3)
        if door == 0:
            return await self.handler_case(form, b24_id, url=self.rig.handler_url(key=self._old[0]))
        if door == 1:
            status, _ = await self.rig.post(self.rig.app_url(key=self._old[0]), {"event": "ONAPPUNINSTALL"})
        else:
            status, _ = await self.rig.post(self.rig.dlr_url(key=self._old[1]),
                                            self.rig.signed_smsru(["sms_status\n1\n103"]))
        return 200 <= status < 300

    async def handler_key_on_callback_doors(self) -> bool:
        """The handler key (in every captured post's URL) on a route's /dlr/: SMSC.ru's
        callbacks are unsigned, so this used to mark any message delivered on a route
        without its own callback_key."""
        b24_id, form = self.genuine(code="by_smsc")
        await self.rig.post(self.rig.handler_url("by_smsc"), form)
        rid, _, digits = (await self.rig.smsc_id(b24_id)).partition(":")
        key = self.rng.choice([self.rig.key, self.rig.key, "", None])
        if self.rng.random() < 0.75:
            status, _ = await self.rig.post(self.rig.smsc_dlr_url(key),
                                            {"id": rid, "phone": digits, "status": "1", "err": "0"})
        else:  # SMS.ru's door, signed for an id we never sent: its key is not the handler key either
            status, _ = await self.rig.post(self.rig.dlr_url(key=key or ""),
                                            self.rig.signed_smsru([f"sms_status\n{rid}\n103"]))
        return 200 <= status < 300 or self.status_of(b24_id) == "delivered"

    async def new_message_id_replay(self) -> bool:
        """A captured post re-posted at once with only a new message_id (the ts too is the
        captured one): accepted means sent a second time."""
        b24_id, form = self.genuine()
        await self.rig.post(self.rig.handler_url(), form)
        replay_id = secrets.token_hex(16)
        await self.rig.post(self.rig.handler_url(), _set(form, message_id=replay_id))
        with self.rig.db() as conn:
            row = conn.execute("SELECT duplicate_of FROM message WHERE b24_id=?", (replay_id,)).fetchone()
        return row is not None and row[0] is None  # stored and not a repeat: it would go out again

    async def previous_key_during_rotation(self) -> bool:
        b24_id, form = self.genuine()
        return await self.handler_case(form, b24_id, url=self.rig.handler_url(key=self._old[0]))

    async def genuine_post(self) -> bool:
        b24_id, form = self.genuine()
        return await self.handler_case(form, b24_id)

    async def run(self) -> None:
        rig = self.rig
        rig.smsru.callback_url = None  # this drill speaks for SMS.ru
        await self.row("genuine posts (control: all accepted)", self.genuine_post, control=True)
        await self.row("genuine posts without auth[] (control, default accept)", self.without_auth_refused,
                       control=True)
        await self.row("wrong application_token, no member_id", self.forged_token_no_member)
        await self.row("wrong application_token, real member_id", self.forged_token_real_member)
        await self.row("unknown member_id", self.unknown_member)
        await self.row("ts outside ±24 h (2001 .. +10 years)", self.stale_ts)
        await self.row("no ts", self.missing_ts)
        await self.row("captured post replayed a day later, other number/text/id", self.replayed_capture)
        await self.row("wrong URL key, any of the three doors", self.wrong_key)
        await self.row("SMS.ru callback unsigned or wrongly signed (URL key right)", self.smsru_unsigned)
        await self.row("handler key (or none) on a /dlr/ door: SMSC.ru route without callback_key, SMS.ru",
                       self.handler_key_on_callback_doors)
        await self.row("captured post re-posted with only a new message_id: sent again",
                       self.new_message_id_replay)
        refuse = 'posts_without_auth = "refuse"'
        await rig.hup_daemon(shim_extra=refuse)  # the daemon's intake reads it
        await self.row('no auth[] with posts_without_auth = "refuse"', self.without_auth_refused)
        await self.flood_unknown_receipts()
        # the daemon is not told of the new keys: it does not check them (and a changed
        # HTTP route would be rebound, which is not what this drill is about)
        self._old = (rig.key, rig.route_key)
        # a rotation as the README says: the old key kept as handler_key_previous meanwhile
        await rig.hup_shim(key=secrets.token_urlsafe(32), route_key=secrets.token_urlsafe(32),
                           shim_extra=refuse + f'\nhandler_key_previous = "{self._old[0]}"')
        await self.row("genuine posts with the previous key during a rotation (control)",
                       self.previous_key_during_rotation, control=True)
        await rig.hup_shim(shim_extra=refuse + '\nallow_from = ["203.0.113.0/24"]')
        await self.row("old key after SIGHUP rotation, any of the three doors", self.old_key_after_rotation)
        await self.row("address not on [shim] allow_from (direct or via proxy)", self.not_on_allow_from)

    async def flood_unknown_receipts(self) -> None:
        """Signed callbacks for ids we never sent: answered 100 (SMS.ru would retry
        otherwise), but kept only up to the route's bound."""
        n = max(self.cases, 1100)
        for i in range(n):
            await self.rig.post(self.rig.dlr_url(), self.rig.signed_smsru([f"sms_status\nflood-{i}\n103"]))
        with self.rig.db() as conn:
            kept = conn.execute("SELECT count(*) FROM receipt_pending WHERE route='smsru'").fetchone()[0]
        self.flood = (n, kept)
        print(f"  unknown-id flood: {n} sent, {kept} kept (bound 1000)", file=sys.stderr)


_NEVER_LOGGED = ("message_to", "message_body", "properties[phone_number]", "properties[message_text]",
                 "auth[access_token]", "auth[application_token]", "auth[refresh_token]")


def leaked_values(rig: DoorsRig) -> tuple[int, int]:
    """(values checked, values found in a log line): every key of every URL posted,
    every token, full number and text of every form, genuine or forged, raw or as JSON
    escapes it, against both processes' logs."""
    values = {rig.portal.application_token, rig.portal.client_secret, rig.smsru.api_id, rig.smscru.psw}
    for url, form in rig.sent:
        values.update(v for k, v in parse_qsl(urlsplit(url).query) if k == "key")
        values.update(v for k, v in form if k in _NEVER_LOGGED)
        values.update(v.lstrip("+") for k, v in form if k == "message_to")
    values = {v for v in values if len(v) >= 8}
    logs = rig.log("shim") + rig.log("daemon")
    return len(values), sum(1 for v in values if v in logs or json.dumps(v)[1:-1] in logs)


async def main(cases: int, seed: int) -> int:
    with tempfile.TemporaryDirectory(prefix="smppd-attacks-") as tmp:
        rig = await start_doors(Path(tmp))
        started = time.monotonic()
        try:
            drill = Drill(rig, cases, seed)
            await drill.run()
        finally:
            await stop_doors(rig)  # the processes' last log lines are written as they stop
        checked, leaked = leaked_values(rig)
    print(f"\n{cases} cases per attack, {time.monotonic() - started:.1f} s, real smppd run + smppd-shim\n")
    print("| attack | cases | accepted |")
    print("|---|---:|---:|")
    for name, n, accepted in drill.rows:
        print(f"| {name} | {n} | {accepted} |")
    n, kept = drill.flood
    print(f"\nsigned SMS.ru callbacks for {n} unknown ids: {kept} kept (unknown_receipts_max = 1000)")
    print(f"keys, tokens, full numbers and texts posted: {checked} distinct, {leaked} found in a log line")
    controls = [r for r in drill.rows if r[0] in drill.controls]
    attacks = [r for r in drill.rows if r[0] not in drill.controls]
    bad = sum(a for _, _, a in attacks)
    ok = all(a == n for _, n, a in controls) and bad == 0 and kept <= 1000 and leaked == 0 and checked > 0
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=63, help="cases per attack (default 63, the issue's count)")
    p.add_argument("--seed", type=int, default=18)
    args = p.parse_args()
    sys.exit(asyncio.run(main(args.cases, args.seed)))
