"""``smppd cost``: price and parts without sending, per route kind."""

import pytest

from smppd.cli import main as cli
from smppd.cli.cost import quote
from smppd.sims.smsc import SmscSimulator
from smppd.sims.smsru import SmsRuSimulator

from tests.rigs.config_rig import cfg_with


@pytest.fixture
async def sims():
    ru, sc = SmsRuSimulator(), SmscSimulator()
    await ru.start()
    await sc.start()
    yield ru, sc
    await ru.stop()
    await sc.stop()


@pytest.mark.integration
async def test_cost_per_route_kind_and_nothing_is_sent(sims):
    ru, sc = sims
    cfg = cfg_with(ru.base_url, sc.base_url + "sys/")
    body = "Здравствуйте! " * 10  # 140 Cyrillic characters: 3 parts
    q = await quote(cfg, "by_ru", body, ["+375291234567", "8 (033) 123-45-67", "12345"])
    assert q.segments == 3 and q.total_sms == 6 and q.total_cost == pytest.approx(6 * ru.price)
    assert [r[1] for r in q.rows] == [None, 3, 3] and "invalid number" in q.rows[0][3]
    assert ru.requests[-1][0] == "sms/cost" and not ru.messages
    q = await quote(cfg, "by_sc", body, ["+375291234567", "+375331234567"])
    assert q.total_sms == 6 and q.total_cost == pytest.approx(6 * sc.price)
    assert sc.requests[-1][1]["cost"] == "1" and not sc.messages
    q = await quote(cfg, "by_sms_main", body, ["+375291234567"])  # SMPP: parts only
    assert q.total_sms == 3 and q.total_cost is None


def test_cost_command_usage_errors(tmp_path, capsys):
    assert cli.main(["cost", "-c", str(tmp_path / "none.toml"), "--code", "x", "--text", "t", "1"]) == 2
    from tests.rigs.config_rig import EXAMPLE

    assert cli.main(["cost", "-c", str(EXAMPLE), "--code", "nosuch", "--text", "t", "+375291234567"]) == 2
    assert "no sender with code" in capsys.readouterr().err
