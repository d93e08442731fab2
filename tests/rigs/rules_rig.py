"""A demo rig with business rules: marketing CODEs, a CRM with consent fields, a settable wall clock."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from zoneinfo import ZoneInfo

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.config import RulesConfig, SenderConfig
from smppd.daemon import Daemon
from smppd.cli.demo import Rig, make_config, start_shim, stop_rig
from smppd.sims.smpp import SimulatorConfig, SmscSimulator

MINSK = ZoneInfo("Europe/Minsk")


class WallClock:
    """time.time() that a test sets: quiet hours are a time of day, and tests do not wait for 9 am."""

    def __init__(self, hour: int, minute: int = 0) -> None:
        self.set(hour, minute)

    def set(self, hour: int, minute: int = 0, day: int = 10) -> None:
        self.now = datetime(2026, 11, day, hour, minute, tzinfo=MINSK).timestamp()

    def __call__(self) -> float:
        return self.now


SENDERS = {
    "by_life": SenderConfig(code="by_life", route="life", sender_id="DemoShop", name="life",
                            marketing_sender_id="DemoPromo"),
    "by_mts": SenderConfig(code="by_mts", route="mts", sender_id="DemoShop", name="mts"),
    "promo": SenderConfig(code="promo", route="life", sender_id="DemoShop", name="promo", type="marketing",
                          marketing_sender_id="DemoPromo"),
}


async def start_rules_rig(tmp: Path, *, rules: RulesConfig = RulesConfig(), clock: WallClock | None = None,
                          outcomes: dict[str, float] | None = None, mts_countries: frozenset[str] | None = None,
                          scope: str = "crm,messageservice") -> Rig:
    portal = SimulatedPortal(rate=None, scope=scope)
    await portal.start()
    smscs = {
        name: SmscSimulator(SimulatorConfig(system_id=name.upper(), accounts={"smppd": "secret"},
                                            outcomes=outcomes or {"DELIVRD": 1.0}, id_format="hex", seed=5))
        for name in ("life", "mts")
    }
    for smsc in smscs.values():
        await smsc.start()
    cfg = make_config(tmp, portal, smscs, handler_key=secrets.token_urlsafe(24))
    routes = dict(cfg.routes)
    routes["mts"] = dataclasses.replace(routes["mts"], countries=mts_countries)
    cfg = dataclasses.replace(cfg, senders=MappingProxyType(SENDERS), rules=rules,
                              routes=MappingProxyType(routes))
    rig = Rig(tmp, portal, smscs, cfg)
    rig.clock = clock or WallClock(12)  # type: ignore[attr-defined]
    await start_rules_daemon(rig)
    await start_shim(rig)
    return rig


async def start_rules_daemon(rig: Rig) -> None:
    rig.daemon = Daemon(rig.config, wall_clock=rig.clock)  # type: ignore[attr-defined]
    await rig.daemon.start()


async def settle(rig: Rig) -> None:
    """Let the hold worker finish what it was woken for (it judges in one pass)."""
    assert rig.daemon is not None
    for _ in range(5):
        await asyncio.sleep(0.02)
        await rig.daemon.holds.step()


__all__ = ["WallClock", "start_rules_rig", "start_rules_daemon", "settle", "stop_rig"]
