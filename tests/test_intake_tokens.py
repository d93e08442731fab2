"""The intake's token rule at its edges (issue 18 §2): an empty token opens nothing."""

from __future__ import annotations

import tomllib

import pytest

from smppd import config as config_mod
from smppd.intake import Intake
from smppd.rpc import RpcError
from smppd.model import PortalRecord
from smppd.store import Store

from tests.rigs.intake_rig import CONFIG, MEMBER, post


@pytest.mark.parametrize("posted", [None, ""])
async def test_a_portal_without_a_token_on_record_is_not_opened_by_a_post_without_one(store: Store,
                                                                                      posted) -> None:
    portal = PortalRecord(MEMBER, "shop.bitrix24.by", "", "", "", "", "", "", "")
    dispatched: list = []
    intake = Intake(config_mod.parse(tomllib.loads(CONFIG)), store, lambda: {MEMBER: portal}, dispatched.append)
    with pytest.raises(RpcError) as err:
        await intake(post(1, application_token=posted))
    assert err.value.code == "forbidden" and dispatched == []
