"""A portal and a config for driving the daemon's intake directly, without a shim or socket."""

from __future__ import annotations

from typing import Any


MEMBER = "a1b2c3d4e5f60718293a4b5c6d7e8f90"
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"
CONFIG = """
[daemon]
socket = "/tmp/unused.sock"
database = "/tmp/unused.db"

[shim]
listen = "127.0.0.1:8080"
handler_key = "test-handler-key-0123456789abcdef"

[route.life]
kind = "smpp"
host = "127.0.0.1"
port = 2775
system_id = "smppd"
password = "secret"

[sender.by_life]
route = "life"
sender_id = "DemoShop"
name = "SMS"
"""


def post(n: int, **kw: Any) -> dict[str, Any]:
    return {"member_id": MEMBER, "application_token": TOKEN, "code": "by_life", "b24_id": f"{n:032x}",
            "to": f"+37529{1000000 + n:07d}", "text": f"Order {n} is ready", "module_id": "crm", **kw}
