"""Intake and numbers the phone library lags behind on (issue 14 item 12)."""

from __future__ import annotations

import tomllib

import pytest

from smppd import config as config_mod
from prometheus_client import REGISTRY
from smppd.config import ConfigError
from smppd.intake import Intake
from smppd.model import OpenMessage, PortalRecord
from smppd.store import Store

from tests.rigs.intake_rig import CONFIG, MEMBER, TOKEN, post

from tests.rigs.store_rig import connect

NEW_RANGE = "+375 25 123 45 67"  # the integrators' own example; phonenumbers says "not a valid number"


def intake(store: Store, strict: bool | None) -> tuple[Intake, list[OpenMessage]]:
    text = CONFIG if strict is None else CONFIG.replace('password = "secret"',
                                                        f'password = "secret"\nstrict_numbers = {str(strict).lower()}')
    cfg = config_mod.parse(tomllib.loads(text))
    portal = PortalRecord(MEMBER, "shop.bitrix24.by", "", "", "", "", TOKEN, "", "")
    sent: list[OpenMessage] = []
    return Intake(cfg, store, lambda: {MEMBER: portal}, sent.append), sent


def counted(reason: str = "not a valid number") -> float:
    return REGISTRY.get_sample_value("smppd_numbers_outside_metadata_total",
                                             {"route": "life", "reason": reason}) or 0.0


async def test_a_mobile_shaped_number_is_sent_and_the_librarys_verdict_counted(store: Store) -> None:
    door, sent = intake(store, None)
    before = counted()
    answer = await door(post(1, to=NEW_RANGE))
    assert answer["status"] == "queued"
    assert [m.phone for m in sent] == ["+375251234567"]
    assert counted() == before + 1
    await door(post(2))  # a number the library knows: not counted
    assert counted() == before + 1


async def test_a_strict_route_refuses_it_with_the_librarys_reason(store: Store) -> None:
    door, sent = intake(store, True)
    answer = await door(post(1, to=NEW_RANGE))
    assert answer["status"] == "failed" and sent == []
    row = connect(store.path).execute("SELECT reason FROM message").fetchone()
    assert row == ("invalid number: not a valid number",)


def test_strict_numbers_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match=r"route\.life\.strict_numbers"):
        config_mod.parse(tomllib.loads(CONFIG.replace('password = "secret"', 'password = "secret"\nstrict_numbers = 1')))
