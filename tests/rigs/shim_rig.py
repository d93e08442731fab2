"""The shim's tests' peer: a fake daemon behind a real RpcServer on a Unix socket, and
the example HANDLER post of reference/bitrix24.md."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from smppd.rpc import RpcClient, RpcServer

KEY = "k3y-0f-at-least-32-random-chars-xyz"
CODE = "by_sms_main"
APP_TOKEN = "51856fefc120afa4b628cc82d3935cce"
ACCESS_TOKEN = "s3cr3t-access-token"
URL = f"/bitrix24/{CODE}?key={KEY}"
FORM_CT = {"Content-Type": "application/x-www-form-urlencoded"}

# reference/bitrix24.md §4, a CRM-card send; keys out of order on purpose.
EXAMPLE: list[tuple[str, str]] = [
    ("module_id", "crm"),
    ("bindings[1][OWNER_TYPE_ID]", "3"),
    ("bindings[1][OWNER_ID]", "877"),
    ("bindings[0][OWNER_TYPE_ID]", "2"),
    ("bindings[0][OWNER_ID]", "1541"),
    ("properties[phone_number]", "+375291234567"),
    ("properties[message_text]", "Ваш заказ готов"),
    ("type", "SMS"),
    ("code", CODE),
    ("message_id", "72DD742C8270DB0DDBBAB92F98877537"),
    ("message_to", "+375291234567"),
    ("message_body", "Ваш заказ готов"),
    ("ts", "1767225600"),
    ("auth[application_token]", APP_TOKEN),
    ("auth[member_id]", "a223c6b3710f85df22e9377d6c4f7553"),
    ("auth[domain]", "example.bitrix24.by"),
    ("auth[access_token]", ACCESS_TOKEN),
    ("auth[expires_in]", "3600"),
    ("auth[scope]", "messageservice"),
    ("auth[user_id]", "7"),
    ("auth[client_endpoint]", "https://example.bitrix24.by/rest/"),
    ("auth[server_endpoint]", "https://oauth.bitrix.info/rest/"),
]


def body(fields: list[tuple[str, str]] = EXAMPLE, **changes: str | None) -> bytes:
    """The example form, URL-encoded as Bitrix24 sends it, with fields
    replaced (value) or removed (None)."""
    out = [(k, changes.get(k, v)) for k, v in fields if changes.get(k, v) is not None]
    out += [(k, v) for k, v in changes.items() if v is not None and k not in dict(fields)]
    return urlencode(out, encoding="utf-8").encode("ascii")


class FakeDaemon:
    """Stands in for smppd's intake: records params, answers as told."""

    def __init__(self) -> None:
        self.intakes: list[dict[str, Any]] = []
        self.error: Exception | None = None
        self.delay = 0.0

    async def intake(self, params: dict[str, Any]) -> Any:
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        self.intakes.append(params)
        return {"id": 41, "status": "queued", "duplicate": len(self.intakes) > 1}

    async def ping(self, params: dict[str, Any]) -> Any:
        return "pong"


@pytest.fixture
def sock_path() -> Iterator[str]:
    directory = tempfile.mkdtemp(prefix="shim", dir="/tmp")
    yield os.path.join(directory, "smppd.sock")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def daemon() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
async def rpc_server(sock_path: str, daemon: FakeDaemon) -> AsyncIterator[RpcServer]:
    server = RpcServer(sock_path, {"intake": daemon.intake, "ping": daemon.ping})
    await server.start()
    yield server
    await server.close()


@pytest.fixture
async def rpc(sock_path: str) -> AsyncIterator[RpcClient]:
    client = RpcClient(sock_path, timeout=1)
    yield client
    await client.close()
