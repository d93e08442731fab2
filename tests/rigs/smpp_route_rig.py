"""A route, a store and a simulated SMSC on loopback: the SMPP side without shim or portal."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from smppd.config import SmppRouteConfig
from smppd.routes.smpp import SmppRoute
from smppd.smpp.segments import route_encoding
from smppd.sims.smpp import SimulatorConfig, SmscSimulator
from smppd.sims.smpp_policy import SubmitPolicy
from smppd.model import NewMessage, OpenMessage
from smppd.store import Store

FINAL = {"delivered", "undelivered", "expired", "rejected", "failed"}


@dataclass
class RouteRig:
    store: Store
    smsc: SmscSimulator
    route: SmppRoute
    task: asyncio.Task[Any] | None = None
    counter: int = 0
    ids: list[int] = field(default_factory=list)

    async def send(self, body: str = "Your code 1234", to: str = "+375291234567",
                   sender: str = "MyShop") -> int:
        """Intake one message as the daemon does (store, then dispatch) and return its id."""
        self.counter += 1
        encoded = route_encoding(self.route.cfg, body)
        result = await self.store.intake(NewMessage(
            member_id="m1", b24_id=f"b24-{self.counter}", code="by_life", route=self.route.name,
            sender=sender, phone=to, text=body, encoding=encoded.encoding, segments=encoded.segments,
        ))
        self.route.enqueue(OpenMessage(result.id, self.route.name, sender, to, body,
                                       tuple(range(encoded.segments)), result.concat_ref, f"b24-{self.counter}"))
        self.ids.append(result.id)
        return result.id

    async def message(self, mid: int) -> dict[str, Any]:
        m = await self.store.message(mid)
        assert m is not None
        return m

    async def wait_final(self, ids: list[int] | None = None, timeout: float = 10.0) -> dict[int, str]:
        ids = self.ids if ids is None else ids
        deadline = time.monotonic() + timeout
        while True:
            statuses = {i: (await self.message(i))["status"] for i in ids}
            if all(s in FINAL for s in statuses.values()):
                return statuses
            if time.monotonic() > deadline:
                raise AssertionError(f"not final in time: {statuses}")
            await asyncio.sleep(0.02)

    async def wait(self, predicate: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("condition not met in time")
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self.task = asyncio.create_task(self.route.run())

    async def close(self) -> None:
        await self.route.stop(timeout=1.0)
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.smsc.stop()
        await self.store.close()


def route_config(port: int, **overrides: Any) -> SmppRouteConfig:
    values: dict[str, Any] = dict(
        name="life", host="127.0.0.1", port=port, system_id="smppd", password="secret",
        reconnect_min=0.02, reconnect_max=0.2, response_timeout=2.0,
    )
    values.update(overrides)
    return SmppRouteConfig(**values)


async def make_rig(tmp: Path, *, sim: dict[str, Any] | None = None, policy: SubmitPolicy | None = None,
                   start: bool = True, **route: Any) -> RouteRig:
    cfg = SimulatorConfig(**{"receipt_delay": 0.0, **(sim or {})})
    smsc = SmscSimulator(cfg, policy=policy)
    await smsc.start()
    store = Store(str(tmp / "route.db"))
    await store.open()
    rig = RouteRig(store, smsc, SmppRoute(route_config(smsc.port, **route), store))
    if start:
        rig.start()
    return rig


def replace(cfg: SmppRouteConfig, **changes: Any) -> SmppRouteConfig:
    return dataclasses.replace(cfg, **changes)


@pytest.fixture
async def rigs() -> Any:
    """``make_rig`` as a fixture: ``await rigs(tmp_path, **kw)``; every rig made is closed after the test."""
    made: list[Any] = []

    async def make(tmp_path: Path, **kw: Any) -> Any:
        rig = await make_rig(tmp_path, **kw)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.close()
