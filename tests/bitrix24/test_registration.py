"""Provider registration against the simulated portal: idempotence and an admin-readable
message for each Bitrix24 refusal."""

import dataclasses

import aiohttp
import pytest

from smppd.sims.bitrix24 import SimulatedPortal
from smppd.bitrix24.registration import explain, handler_url, register, unregister
from smppd.bitrix24.rest import RestClient, RestError
from smppd.model import PortalRecord
from smppd.config import SenderConfig

SENDERS = [SenderConfig(code="by_life", route="life", sender_id="Shop", name="SMS (life:))"),
           SenderConfig(code="by_mts", route="mts", sender_id="Shop", name="SMS (MTS)")]
KEY = "k" * 32
PUBLIC = "https://sms.example.by"


@pytest.fixture
async def portal():
    async with SimulatedPortal(rate=None, allow_local_handler=False) as sim:
        yield sim


@pytest.fixture
async def client(portal):
    async with aiohttp.ClientSession() as http:
        yield RestClient(http, PortalRecord(**portal.install_auth()),
                         rate=None, backoff_base=0.01, backoff_max=0.02, max_attempts=2)


@pytest.mark.integration
async def test_register_adds_then_finds_present(portal, client):
    report = await register(client, SENDERS, public_url=PUBLIC, handler_key=KEY)
    assert report.ok and report.added == ["by_life", "by_mts"]
    assert portal.senders["by_mts"]["HANDLER"] == f"{PUBLIC}/bitrix24/by_mts?key={KEY}"
    assert portal.senders["by_mts"]["TYPE"] == "SMS" and portal.senders["by_mts"]["NAME"] == "SMS (MTS)"
    again = await register(client, SENDERS, public_url=PUBLIC, handler_key=KEY)
    assert again.added == [] and again.present == ["by_life", "by_mts"]
    assert portal.method_calls["messageservice.sender.add"] == 2
    gone = await unregister(client, SENDERS)
    assert gone.removed == ["by_life", "by_mts"] and portal.senders == {}
    assert (await unregister(client, SENDERS)).removed == []


@pytest.mark.integration
async def test_loopback_handler_is_refused_with_a_hint(client):
    report = await register(client, SENDERS[:1], public_url="http://127.0.0.1:8080", handler_key=KEY)
    assert not report.ok
    assert report.errors["by_life"].startswith("ERROR_WRONG_HANDLER_URL")
    assert "shim.public_url" in report.errors["by_life"]


@pytest.mark.integration
async def test_non_admin_token_is_explained(portal, client):
    _, form = portal.create_message("by_life", "+375291234567", "x")
    client.adopt(dataclasses.replace(client.portal, access_token=dict(form)["auth[access_token]"]))
    report = await register(client, SENDERS, public_url=PUBLIC, handler_key=KEY)
    assert list(report.errors) == ["*"] and "ACCESS_DENIED" in report.errors["*"]
    assert "administrator" in report.errors["*"] and portal.senders == {}


@pytest.mark.integration
async def test_overload_is_explained_not_retried(portal, client):
    portal.overloaded = True
    report = await register(client, SENDERS, public_url=PUBLIC, handler_key=KEY)
    assert "OVERLOAD_LIMIT" in report.errors["*"] and "support" in report.errors["*"]


def test_explain_unknown_code_keeps_code_and_description():
    assert explain(RestError("SOMETHING_NEW", "Boom")) == "SOMETHING_NEW (Boom)"


def test_handler_url_quotes_the_key():
    assert handler_url("https://h.by/", "by_sms", "a/b+c") == "https://h.by/bitrix24/by_sms?key=a%2Fb%2Bc"


@pytest.mark.integration
async def test_update_rewrites_the_handler_of_present_codes(portal, client):
    await register(client, SENDERS, public_url=PUBLIC, handler_key=KEY)
    report = await register(client, SENDERS, public_url=PUBLIC, handler_key="n" * 32, update=True)
    assert report.ok and report.updated == ["by_life", "by_mts"] and report.added == []
    assert portal.senders["by_life"]["HANDLER"] == f"{PUBLIC}/bitrix24/by_life?key={'n' * 32}"
