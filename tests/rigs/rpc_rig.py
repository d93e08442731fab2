"""Driving the daemon's Unix-socket RPC by hand: a raw connection, and a server that holds calls."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from smppd.rpc import MAX_LINE, RpcServer


class RawConnection:
    """A hand-driven client, for sending what RpcClient never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: str) -> RawConnection:
        return cls(*await asyncio.open_unix_connection(path, limit=MAX_LINE))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def reply(self) -> dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n"), line
        return json.loads(line)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@contextlib.asynccontextmanager
async def gated_server(sock_path: str) -> AsyncIterator[tuple[Gate, RawConnection]]:
    """A server whose one method, "gate", is a ``Gate``, and a raw connection to it."""
    gate = Gate()
    srv = RpcServer(sock_path, {"gate": gate})
    await srv.start()
    raw = await RawConnection.open(sock_path)
    try:
        yield gate, raw
    finally:
        await raw.close()
        await srv.close()


class Gate:
    """A handler that holds every call until ``release`` is set; ``started`` lists the
    ``n`` of each call in the order the server started them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.started: list[int] = []

    async def __call__(self, params: dict[str, Any]) -> Any:
        self.started.append(params["n"])
        await self.release.wait()
        return params["n"]
