"""Fuzzing every door of the real daemon and shim processes, with genuine posts served throughout.

    .venv/bin/python bench/fuzz.py                         # 100,000 cases per door (the full run)
    .venv/bin/python bench/fuzz.py --cases 5000 --doors handler,socket
    .venv/bin/python bench/fuzz.py --cases 300 --genuine 40 --json   # what tests/ops/test_log_leaks.py runs

Processes as in production: ``smppd run`` and ``smppd-shim`` (JSON logs to files), and this
one, which is everybody else: the simulated Bitrix24 portal, a well-behaved SMSC for the
genuine messages (route ``good``), a hostile SMSC the daemon binds to (route ``hostile``)
that answers the bind and then sends mutated PDUs, and the fuzzer. The doors:

    handler   POST /bitrix24/CODE?key=  mutated HANDLER forms, headers, encodings, multipart files
    dlr       GET/POST /dlr/ROUTE?key=  mutated SMS.ru and SMSC.ru callbacks
    app       POST /bitrix24-app?key=   mutated install/update/uninstall events
    socket    the daemon's Unix socket: wrong JSON types, huge integers, deep nesting, garbage
    smsc      PDUs from the hostile SMSC to our bind: mutated deliver_sm, stray responses,
              unknown commands, broken framing

Printed per door: cases, answers by status, 5xx other than 503 (must be 0), ``internal``
socket errors (must be 0); then crashes (a process that died: must be 0), RSS of the daemon
and the shim before and after, genuine posts answered 200 and final at the portal (all), and
log lines holding a secret, a full number or a message text (``leaks``, must be 0): the key,
the portal's tokens and secret, the providers' credentials, every number and text posted.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import random
import re
import secrets
import string
import struct
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from bench.e2e import Gateway  # noqa: E402
from bench.procs import free_port, proc_stats  # noqa: E402
from smppd.sims.bitrix24 import SimulatedPortal  # noqa: E402
from smppd.smpp.encode import encode  # noqa: E402
from smppd.smpp.pdu import COMMAND_NAMES  # noqa: E402
from smppd.sims.smpp import SimulatorConfig, SmscSimulator  # noqa: E402

DOORS = ("handler", "dlr", "app", "socket", "smsc")
MARK = "Kvorumzx"
"""In every text this run posts, so a log line holding a text fragment is found by it."""
FINAL = frozenset({"delivered", "undelivered", "failed"})


# --------------------------------------------------------------------------
# the run's secrets and the config


class Secrets:
    def __init__(self) -> None:
        self.key = "k" + secrets.token_hex(16)
        self.smpp_password = "pw" + secrets.token_hex(3)  # SMPP passwords are at most 8 characters
        self.api_id = "api" + secrets.token_hex(12)
        self.smsc_password = "smscpw" + secrets.token_hex(8)
        # each HTTP route's callback door opens with its own key, never the handler key
        self.callback_keys = {"smsru": "cb" + secrets.token_hex(16), "smsc": "cb" + secrets.token_hex(16)}
        self.numbers: set[str] = set()

    def words(self, portal: SimulatedPortal) -> dict[str, str]:
        return {"key": self.key, "smpp_password": self.smpp_password, "api_id": self.api_id,
                "smsc_password": self.smsc_password, "client_secret": portal.client_secret,
                "access_token": portal.access_token, "refresh_token": portal.refresh_token,
                "application_token": portal.application_token,
                **{f"callback_key_{route}": key for route, key in self.callback_keys.items()}}


def config_toml(tmp: Path, portal: SimulatedPortal, s: Secrets, *, shim_port: int, good: int, hostile: int) -> Path:
    smpp = f'kind = "smpp"\nhost = "127.0.0.1"\nsystem_id = "smppd"\npassword = "{s.smpp_password}"\n'
    text = f"""
[daemon]
socket = "{tmp}/smppd.sock"
database = "{tmp}/smppd.db"

[shim]
listen = "127.0.0.1:{shim_port}"
handler_key = "{s.key}"

{portal.portal_toml(rate=1000.0, burst=10000)}
[route.good]
{smpp}port = {good}
window = 50

[route.hostile]
{smpp}port = {hostile}
reconnect_min = 0.05
reconnect_max = 0.3

[route.smsru]
kind = "smsru"
api_id = "{s.api_id}"
callback_key = "{s.callback_keys['smsru']}"
base_url = "http://127.0.0.1:9/"

[route.smsc]
kind = "smsc"
login = "fuzz"
password = "{s.smsc_password}"
callback_key = "{s.callback_keys['smsc']}"
base_url = "http://127.0.0.1:9/sys/"

[sender.by_good]
route = "good"
sender_id = "DemoShop"
name = "genuine"

[sender.by_hostile]
route = "hostile"
sender_id = "DemoShop"
name = "hostile"
"""
    path = tmp / "config.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# mutations


def rand_text(rng: random.Random, n: int | None = None) -> str:
    n = rng.randint(0, 40) if n is None else n
    pools = (string.printable, "абвгдеёжзийклмнопрстуфхцчшщъыьэюя", "\x00\x01\ufffd\u202e\ud7ff€😀", "%&=[]+")
    return "".join(rng.choice(rng.choice(pools)) for _ in range(n))


def phone(rng: random.Random, s: Secrets) -> str:
    number = f"+37529{rng.randint(1000000, 9999999)}"
    s.numbers.add(number)
    return number


def mutate_fields(rng: random.Random, fields: list[tuple[str, str]], s: Secrets) -> list[tuple[str, str]]:
    fields = list(fields)
    for _ in range(rng.randint(1, 4)):
        op = rng.random()
        if op < 0.25 and fields:
            fields.pop(rng.randrange(len(fields)))
        elif op < 0.5 and fields:
            i = rng.randrange(len(fields))
            # a number-shaped value in a random field (an id, say) is not a number we must hide: not recorded
            fields[i] = (fields[i][0], rng.choice([rand_text(rng), "", "-1", "9" * rng.randint(1, 40), "SMS",
                                                   f"{MARK} {rand_text(rng, 5)}", f"+37533{rng.randint(10**6, 10**7 - 1)}",
                                                   "x" * 5000]))
        elif op < 0.7:
            fields.append((rng.choice(["bindings[0][OWNER_ID]", "bindings[99][OWNER_TYPE_ID]", "auth[domain]",
                                       "document_id[0]", "ts", "type", "code", "message_id", rand_text(rng, 8),
                                       "data[]", "id", "status", "event", "auth[" * 5]),
                           rand_text(rng)))
        elif op < 0.85 and fields:
            i = rng.randrange(len(fields))
            fields[i] = (rand_text(rng, rng.randint(1, 20)), fields[i][1])
        else:
            rng.shuffle(fields)
    return fields


def http_case(rng: random.Random, fields: list[tuple[str, str]]) -> tuple[bytes, dict[str, str]]:
    """A body and headers: mostly a urlencoded form, sometimes something else entirely."""
    body = urlencode(fields).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = rng.random()
    if r < 0.06:
        headers["Content-Type"] += "; charset=" + rng.choice(["bogus", "utf-16", "latin-1", "utf-8", "x-unknown", ""])
    elif r < 0.12:
        headers["Content-Encoding"] = "gzip"
        body = gzip.compress(body) if rng.random() < 0.5 else b"\x1f\x8b" + body[:50]
    elif r < 0.15:
        headers["Content-Encoding"] = rng.choice(["br", "zstd", "deflate", "bogus, gzip"])
    elif r < 0.24:
        boundary = "fz" + secrets.token_hex(4)
        parts = []
        for name, value in fields[: rng.randint(0, len(fields))]:
            filename = '; filename="f.bin"' if rng.random() < 0.3 else ""
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n{value}\r\n')
        body = ("".join(parts) + (f"--{boundary}--\r\n" if rng.random() < 0.8 else "")).encode("utf-8", "replace")
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
    elif r < 0.28:
        headers["Content-Type"] = rng.choice(["application/json", "text/plain", "multipart/form-data", "x/y; a=b"])
    elif r < 0.33:
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
    elif r < 0.35:
        body = b"a=" + b"x" * rng.randint(60_000, 80_000)
    return body, headers


# --------------------------------------------------------------------------
# the HTTP doors


class HttpDoor:
    def __init__(self, name: str, base: str, portal: SimulatedPortal, s: Secrets, rng: random.Random) -> None:
        self.name, self.base, self.portal, self.s, self.rng = name, base, portal, s, rng
        self.answers: Counter[int] = Counter()
        self.client_errors = 0
        self.cases = 0
        self.samples: list[str] = []  # requests answered 5xx (not 503), for the report
        self.error_kinds: Counter[str] = Counter()

    def request(self) -> tuple[str, str, bytes, dict[str, str]]:
        rng, s = self.rng, self.s
        key = s.key if rng.random() < 0.9 else rng.choice(["", "wrong", s.key + "x"])
        if self.name == "handler":
            code = rng.choice(["by_good", "by_hostile", "by_good", "nope", "by_good%00"])
            _, fields = self.portal.create_message("by_good", phone(rng, s), f"{MARK} {rand_text(rng, 20)}")
            fields = [(k, code if k == "code" and rng.random() < 0.5 else v) for k, v in fields]
            body, headers = http_case(rng, mutate_fields(rng, fields, s))
            return "POST", f"/bitrix24/{code}?key={key}", body, headers
        if self.name == "dlr":
            route = rng.choice(["smsru", "smsc", "good", "nope"])
            if route == "smsru":
                fields = [("data[]", f"sms_status\n{rng.randint(1, 10**12)}-{rng.randint(1, 9)}\n"
                                     f"{rng.choice([103, 104, 105, 106, 107, 108, 150, 'x'])}\n{int(time.time())}")
                          for _ in range(rng.randint(1, 4))]
                fields.append(("hash", secrets.token_hex(32)))
            else:
                fields = [("id", str(rng.randint(1, 10**9))), ("phone", phone(rng, s).lstrip("+")),
                          ("status", str(rng.randint(-3, 30))), ("err", str(rng.randint(0, 300))),
                          ("md5", secrets.token_hex(16))]
            fields = mutate_fields(rng, fields, s) if rng.random() < 0.7 else fields
            key = self.s.callback_keys.get(route, key)  # the route's own key; others get 401
            if rng.random() < 0.3:
                return "GET", f"/dlr/{route}?key={key}&{urlencode(fields)}", b"", {}
            body, headers = http_case(rng, fields)
            return "POST", f"/dlr/{route}?key={key}", body, headers
        # Events of portals other than the genuine one: a genuine uninstall (or a reinstall with new
        # tokens) of the portal the genuine posts come from would rightly refuse them from then on.
        p = self.portal
        event = rng.choice(["ONAPPINSTALL", "ONAPPUPDATE", "ONAPPUNINSTALL", "onappinstall", "", rand_text(rng, 6)])
        fields = [("event", event), ("auth[domain]", rng.choice(["other.bitrix24.by", "evil.example",
                                                                  rand_text(rng, 10)])),
                  ("auth[member_id]", secrets.token_hex(16)),
                  ("auth[application_token]", secrets.token_hex(16)),
                  ("auth[access_token]", rng.choice([p.access_token, secrets.token_hex(16)])),
                  ("auth[refresh_token]", rng.choice([p.refresh_token, secrets.token_hex(16)])),
                  ("auth[client_endpoint]", p.client_endpoint), ("auth[server_endpoint]", p.server_endpoint),
                  ("auth[expires_in]", "3600"), ("auth[scope]", "crm,messageservice")]
        body, headers = http_case(rng, mutate_fields(rng, fields, s))
        return "POST", f"/bitrix24-app?key={key}", body, headers

    async def run(self, http: aiohttp.ClientSession, cases: int, concurrency: int) -> None:
        queue = iter(range(cases))

        async def worker() -> None:
            for _ in queue:
                method, path, body, headers = self.request()
                self.cases += 1
                try:
                    async with http.request(method, self.base + path, data=body or None, headers=headers,
                                            skip_auto_headers=("Content-Type",)) as resp:
                        await resp.read()
                        self.answers[resp.status] += 1
                        if resp.status >= 500 and resp.status != 503 and len(self.samples) < 5:
                            self.samples.append(repr((method, path.split("?")[0], headers, body[:200])))
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    self.client_errors += 1
                    what = (headers.get("Content-Encoding", "") or headers.get("Content-Type", "")[:20]
                            or "no body") + (" >64k" if len(body) > 65536 else "")
                    self.error_kinds[f"{type(exc).__name__}: {what}: {str(exc)[:50]}"] += 1
                    if os.environ.get("FUZZ_DEBUG") and len(self.samples) < 8:
                        self.samples.append(repr((method, path.split("key=")[0], headers, len(body), body[:150])))

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    def figures(self) -> dict[str, Any]:
        bad = sum(n for status, n in self.answers.items() if status >= 500 and status != 503)
        out = {"cases": self.cases, "answers": dict(sorted(self.answers.items())), "5xx_not_503": bad,
               "connection_errors": self.client_errors, "connection_error_kinds": dict(self.error_kinds)}
        if self.samples:
            out["samples"] = self.samples
        return out


# --------------------------------------------------------------------------
# the daemon's socket


def socket_case(rng: random.Random, s: Secrets) -> bytes:
    r = rng.random()
    good = {"code": "by_good", "b24_id": secrets.token_hex(16), "to": phone(rng, s), "text": f"{MARK} x"}
    if r < 0.1:
        return b"[" * rng.randint(1000, 100_000)
    if r < 0.2:
        return json.dumps({"id": 1, "method": "intake", "params": {"ts": rng.choice([2**63, -2**63 - 1, 10**40])}}
                          ).encode().replace(b"1e+40", b"1" + b"0" * 40)
    if r < 0.3:  # one line of garbage: no newline inside, not blank (a blank line gets no answer)
        return b"#" + bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))).replace(b"\n", b" ")
    if r < 0.35:
        return b'{"id": 1, "method": "intake", "params": {"x": NaN}}'
    method = rng.choice(["intake", "intake.batch", "dlr", "app_event", "ping", "status", "message", "stuck",
                         "stoplist.list", "nope", 5, None])
    value_pool = [None, True, 1, -1, 2**62, 1.5, "", "x" * 300, [], {}, [1, [2, [3]]], {"a": {"b": [None]}},
                  phone(rng, s), f"{MARK} {rand_text(rng, 8)}"]
    params: Any = dict(good)
    for name in rng.sample(["code", "b24_id", "to", "text", "bindings", "ts", "route", "form", "event", "auth",
                            "member_id", "id", "ids", "older_than", "portal"], rng.randint(1, 5)):
        params[name] = rng.choice(value_pool)
    if method == "intake.batch":
        params = {"items": [params, good, rng.choice(value_pool)]}
    if rng.random() < 0.05:
        params = rng.choice(value_pool)
    request: Any = {"id": rng.choice([1, "a", None, 1.5, True, [1]]), "method": method, "params": params}
    return json.dumps(request, ensure_ascii=rng.random() < 0.5).encode()


async def socket_door(path: str, cases: int, rng: random.Random, s: Secrets) -> dict[str, Any]:
    codes: Counter[str] = Counter()
    drops = 0
    sent = 0
    reader, writer = await asyncio.open_unix_connection(path, limit=2**21)
    while sent < cases:
        line = socket_case(rng, s)
        sent += 1
        try:
            writer.write(line + b"\n")
            await writer.drain()
            reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
            codes[reply["error"]["code"] if "error" in reply else "result"] += 1
        except (OSError, ValueError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            drops += 1
            writer.close()
            reader, writer = await asyncio.open_unix_connection(path, limit=2**21)
    writer.close()
    return {"cases": sent, "answers": dict(codes), "internal": codes.get("internal", 0), "connections_dropped": drops}


# --------------------------------------------------------------------------
# the hostile SMSC


class HostileSmsc:
    """Answers binds, submits and enquire_links as an SMSC does, then sends what ``pdu`` makes."""

    def __init__(self, rng: random.Random, s: Secrets) -> None:
        self.rng, self.s = rng, s
        self.port = free_port()
        self.binds = 0
        self.sent = 0
        self.responses = 0
        self._bound: asyncio.Queue[asyncio.StreamWriter] = asyncio.Queue()
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readexactly(16)
                length, cid, _status, seq = struct.unpack(">IIII", head)
                body = await reader.readexactly(max(0, length - 16))
                if cid in (0x1, 0x2, 0x9):
                    self.binds += 1
                    writer.write(encode(COMMAND_NAMES[cid | 0x80000000], seq, system_id="HOSTILE"))
                    await self._bound.put(writer)
                elif cid == 0x15:
                    writer.write(struct.pack(">IIII", 16, 0x80000015, 0, seq))
                elif cid == 0x4:
                    writer.write(encode("submit_sm_resp", seq, message_id=str(self.rng.randint(1, 10**9))))
                elif cid == 0x6:
                    writer.write(struct.pack(">IIII", 16, 0x80000006, 0, seq))
                elif cid & 0x80000000:
                    self.responses += 1
                del body
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def pdu(self, seq: int) -> bytes:
        rng = self.rng
        r = rng.random()
        if r < 0.55:
            stat = rng.choice(["DELIVRD", "UNDELIV", "EXPIRED", "REJECTD", "????", rand_text(rng, 7)])
            text = (f"id:{rng.randint(1, 10**9)} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
                    f"stat:{stat} err:000 text:{MARK}").encode("utf-8", "replace")
            if rng.random() < 0.3:
                text = f"{MARK} {rand_text(rng, 30)}".encode("utf-8", "replace")[:250]
            raw = bytearray(encode("deliver_sm", seq, source_addr=phone(rng, self.s).lstrip("+"),
                                         destination_addr="DemoShop", esm_class=rng.choice([0, 4, 4, 0x40]),
                                         data_coding=rng.choice([0, 8, 3, 0xF0]), short_message=text[:254]))
            for _ in range(rng.randint(0, 6)):  # flip bytes in the body; the length stays right
                if len(raw) > 16:
                    raw[rng.randrange(16, len(raw))] = rng.getrandbits(8)
            if rng.random() < 0.2:  # cut or extend the body, keeping the header's length true
                raw = raw[: rng.randint(16, len(raw))] + bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 40)))
                raw[0:4] = struct.pack(">I", len(raw))
            return bytes(raw)
        if r < 0.7:
            cid = rng.choice([0x80000004, 0x80000015, 0x80000000, 0x80000103, 0x80000006])
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 30)))
            return struct.pack(">IIII", 16 + len(body), cid, rng.getrandbits(32), rng.randint(1, 2**31 - 1)) + body
        if r < 0.85:
            cid = rng.choice([0x103, 0x102, 0x21, 0x7, 0x8, rng.getrandbits(32) & 0x7FFFFFFF])
            body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 60)))
            return struct.pack(">IIII", 16 + len(body), cid, 0, seq) + body
        if r < 0.98:
            return struct.pack(">IIII", 16, 0x15, 0, seq)  # enquire_link
        return struct.pack(">IIII", rng.choice([0, 5, 15, 10**7]), 0x5, 0, seq)  # broken framing: a rebind follows

    async def run(self, cases: int) -> dict[str, Any]:
        seq = 1
        writer: asyncio.StreamWriter | None = None
        while self.sent < cases:
            if writer is None or writer.is_closing():
                writer = await asyncio.wait_for(self._bound.get(), 30)
                continue
            for _ in range(min(50, cases - self.sent)):
                if writer.is_closing():  # the daemon dropped the bind (broken framing): wait for the next
                    break
                seq = seq % 0x7FFFFFFF + 1
                writer.write(self.pdu(seq))
                self.sent += 1
            try:
                await writer.drain()
            except ConnectionError:
                writer = None
            await asyncio.sleep(0)
        for _ in range(50):  # the daemon's answers to the last PDUs
            seen = self.responses
            await asyncio.sleep(0.1)
            if self.responses == seen:
                break
        return {"cases": self.sent, "binds": self.binds, "responses_from_daemon": self.responses}


# --------------------------------------------------------------------------
# genuine posts, served all along


class Genuine:
    def __init__(self, base: str, portal: SimulatedPortal, s: Secrets) -> None:
        self.base, self.portal, self.s = base, portal, s
        self.ids: list[str] = []
        self.answers: Counter[int] = Counter()
        self.slowest = 0.0

    async def post(self, http: aiohttp.ClientSession, i: int) -> None:
        number = f"+37529{1000000 + i:07d}"
        self.s.numbers.add(number)
        b24_id, fields = self.portal.create_message("by_good", number, f"{MARK} genuine order {i} is ready")
        t = time.monotonic()
        try:
            async with http.post(f"{self.base}/bitrix24/by_good?key={self.s.key}", data=fields) as resp:
                await resp.read()
                self.answers[resp.status] += 1
        except aiohttp.ClientError:
            self.answers[0] += 1
        self.slowest = max(self.slowest, time.monotonic() - t)
        self.ids.append(b24_id)

    async def trickle(self, http: aiohttp.ClientSession, n: int, stop: asyncio.Event) -> None:
        i = 0
        while i < n:
            await self.post(http, i)
            i += 1
            if not stop.is_set():
                await asyncio.sleep(0.05)

    def final(self) -> int:
        return sum(1 for b in self.ids if self.portal.messages[b].status in FINAL)


# --------------------------------------------------------------------------
# leaks


def scan_logs(paths: list[Path], words: dict[str, str], numbers: set[str]) -> dict[str, Any]:
    digits = {n.lstrip("+") for n in numbers}
    # the same, hex-encoded, as a PDU dump would hold them
    hexed = {name + " (hex)": word.encode().hex() for name, word in words.items() if word}
    hexed["text (hex)"] = MARK.encode().hex()
    hex_digits = {d.encode().hex() for d in digits}
    hex_run = re.compile(r"(?:3[0-9]){11,15}")
    found: Counter[str] = Counter()
    examples: list[str] = []
    run = re.compile(r"\d{11,15}")
    lines = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text(errors="replace").splitlines():
            lines += 1
            hit = [name for name, word in words.items() if word and word in line]
            if MARK in line:
                hit.append("text")
            if any(m in digits for m in run.findall(line)):
                hit.append("number")
            low = line.lower()
            hit += [name for name, word in hexed.items() if word in low]
            if any(m in hex_digits for m in hex_run.findall(low)):
                hit.append("number (hex)")
            for h in hit:
                found[h] += 1
            if hit and len(examples) < 5:
                examples.append(f"{path.name}: {','.join(hit)}: {line[:300]}")
    return {"lines": lines, "leaks": sum(found.values()), "by_kind": dict(found), "examples": examples}


# --------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    return round(proc_stats(pid).rss_mb, 1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    s = Secrets()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="smppd-fuzz-"))
    tmp.mkdir(parents=True, exist_ok=True)
    portal = SimulatedPortal(rate=None)
    await portal.start()
    good = SmscSimulator(SimulatorConfig(system_id="GOOD", accounts={"smppd": s.smpp_password}, seed=args.seed))
    await good.start()
    hostile = HostileSmsc(rng, s)
    await hostile.start()
    shim_port = free_port()
    gw = Gateway(tmp, config_toml(tmp, portal, s, shim_port=shim_port, good=good.port, hostile=hostile.port),
                 shim_port)
    out: dict[str, Any] = {"doors": {}}
    try:
        gw.start_daemon()
        await gw.wait_daemon()
        gw.start_shim()
        base = f"http://127.0.0.1:{shim_port}"
        genuine = Genuine(base, portal, s)
        timeout = aiohttp.ClientTimeout(total=30)
        async with aiohttp.ClientSession(timeout=timeout) as http, \
                aiohttp.ClientSession(timeout=timeout) as fuzz_http:
            for i in range(5):  # warm-up before the "before" figures
                await genuine.post(http, 10_000_000 + i)
            await asyncio.sleep(0.5)
            out["rss_before_mb"] = {"daemon": rss_mb(gw.procs["daemon"].pid), "shim": rss_mb(gw.procs["shim"].pid)}
            stop = asyncio.Event()
            trickle = asyncio.create_task(genuine.trickle(http, args.genuine, stop))
            started = time.monotonic()
            for door in args.doors:
                t = time.monotonic()
                if door in ("handler", "dlr", "app"):
                    d = HttpDoor(door, base, portal, s, rng)
                    await d.run(fuzz_http, args.cases, args.concurrency)
                    figures = d.figures()
                elif door == "socket":
                    figures = await socket_door(str(tmp / "smppd.sock"), args.cases, rng, s)
                else:
                    figures = await hostile.run(args.cases)
                figures["seconds"] = round(time.monotonic() - t, 1)
                out["doors"][door] = figures
                print(f"  {door:8} {json.dumps(figures)}", file=sys.stderr)
            stop.set()
            await trickle
            out["fuzz_seconds"] = round(time.monotonic() - started, 1)
            deadline = time.monotonic() + 60
            while genuine.final() < len(genuine.ids) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
        out["rss_after_mb"] = {"daemon": rss_mb(gw.procs["daemon"].pid), "shim": rss_mb(gw.procs["shim"].pid)}
        out["crashes"] = sum(1 for p in gw.procs.values() if p.poll() is not None)
        out["genuine"] = {"posted": len(genuine.ids), "answers": dict(genuine.answers), "final": genuine.final(),
                          "slowest_answer_s": round(genuine.slowest, 3)}
    finally:
        gw.stop()
        await hostile.stop()
        await good.stop()
        await portal.stop()
    out["logs"] = scan_logs([tmp / "daemon.log", tmp / "shim.log"], s.words(portal), s.numbers)
    out["tmp"] = str(tmp)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000, help="cases per door (default 100,000)")
    p.add_argument("--doors", default=",".join(DOORS), help=f"comma-separated, of {','.join(DOORS)}")
    p.add_argument("--concurrency", type=int, default=32, help="HTTP requests in flight")
    p.add_argument("--genuine", type=int, default=200, help="genuine posts interleaved with the fuzzing")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--keep", help="a directory for the config, database and logs (kept)")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = p.parse_args()
    args.doors = [d for d in args.doors.split(",") if d]
    unknown = set(args.doors) - set(DOORS)
    if unknown:
        p.error(f"unknown doors: {', '.join(sorted(unknown))}")
    out = asyncio.run(run(args))
    if args.json:
        print(json.dumps(out))
    else:
        for door, f in out["doors"].items():
            print(f"{door:8} {f['cases']:>7} cases in {f['seconds']:>6} s  {json.dumps({k: v for k, v in f.items() if k not in ('cases', 'seconds')})}")
        print(f"crashes {out['crashes']}; RSS daemon {out['rss_before_mb']['daemon']} -> {out['rss_after_mb']['daemon']} MB, "
              f"shim {out['rss_before_mb']['shim']} -> {out['rss_after_mb']['shim']} MB")
        print(f"genuine {out['genuine']}")
        print(f"logs {out['logs']['lines']} lines, leaks {out['logs']['leaks']} {out['logs']['by_kind']}")
        for example in out["logs"]["examples"]:
            print("  " + example)
    bad = out["crashes"] or out["logs"]["leaks"] or any(
        f.get("5xx_not_503") or f.get("internal") for f in out["doors"].values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
