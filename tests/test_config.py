import tomllib
from pathlib import Path

import pytest

from smppd import config

EXAMPLE = Path(__file__).parent.parent / "config.toml"


# The example config installs by [[app]]; the manual [[portal]] form is still checked.
MANUAL_PORTAL = {
    "member_id": "m1", "domain": "example.bitrix24.by", "client_endpoint": "https://example.bitrix24.by/rest/",
    "server_endpoint": "https://oauth.bitrix.info/rest/", "client_id": "local.x", "client_secret": "s",
    "application_token": "t",
}


def raw() -> dict:
    with open(EXAMPLE, "rb") as f:
        d = tomllib.load(f)
    d.setdefault("portal", [dict(MANUAL_PORTAL)])
    return d


def test_example_config_loads():
    cfg = config.load(EXAMPLE)
    assert cfg.shim.port == 8080 and cfg.shim.host == "127.0.0.1"
    route = cfg.routes["life"]
    assert route.window == 10 and route.bind_mode == "transceiver" and route.port == 2775
    assert cfg.senders["by_sms_main"].route == "life"
    app = cfg.apps["example.bitrix24.by"]
    assert app.rate == 2.0 and app.client_endpoint == "https://example.bitrix24.by/rest/"
    assert app.server_endpoint == "https://oauth.bitrix.info/rest/"


def test_secrets_do_not_appear_in_repr():
    cfg = config.load(EXAMPLE)
    text = repr(cfg)
    assert cfg.shim.handler_key not in text
    assert "password=" not in text and "client_secret=" not in text


def _error(mutate) -> config.ConfigError:
    r = raw()
    mutate(r)
    with pytest.raises(config.ConfigError) as e:
        config.parse(r)
    return e.value


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda r: r["route"]["life"].update(port=0), "route.life.port", "integer from 1 to 65535"),
        (lambda r: r["route"]["life"].update(port="2775"), "route.life.port", "integer"),
        (lambda r: r["route"]["life"].pop("host"), "route.life.host", "missing"),
        (lambda r: r["route"]["life"].update(password="toolongpassword"), "route.life.password", "8"),
        (lambda r: r["route"]["life"].update(bind_mode="duplex"), "route.life.bind_mode", "transceiver"),
        (lambda r: r["route"]["life"].update(windwo=5), "route.life.windwo", "unknown key"),
        (lambda r: r["route"]["life"].update(kind="carrier-pigeon"), "route.life.kind", "unknown route kind"),
        (lambda r: r["sender"]["by_sms_main"].update(route="mts"), "sender.by_sms_main.route", "no route"),
        (lambda r: r["sender"]["by_sms_main"].update(sender_id="МойМагазин"), "sender.by_sms_main.sender_id", "Latin"),
        (lambda r: r["sender"]["by_sms_main"].update(sender_id="ThisIsTooLongAName"), "sender.by_sms_main.sender_id", "11"),
        (lambda r: r["sender"].update({"BY SMS": {"route": "life", "sender_id": "X"}}), "sender.BY SMS", "a-z"),
        (lambda r: r["shim"].update(handler_key="short"), "shim.handler_key", "24"),
        (lambda r: r["shim"].update(listen="8080"), "shim.listen", "host:port"),
        (lambda r: r.pop("daemon"), "daemon", "missing section"),
        (lambda r: r["portal"][0].update(client_endpoint="example.bitrix24.by"), "portal[0].client_endpoint", "URL"),
        (lambda r: r["portal"].append(dict(r["portal"][0])), "portal[1].member_id", "duplicate"),
    ],
)
def test_errors_name_the_key(mutate, key, words):
    e = _error(mutate)
    assert e.key == key
    assert words in str(e)
    assert str(e).startswith(key + ": ")


def test_bad_toml_and_missing_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[daemon\n")
    with pytest.raises(config.ConfigError, match="not valid TOML"):
        config.load(bad)
    with pytest.raises(config.ConfigError, match="file not found"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("change, key", [
    ({"domain": "https://example.bitrix24.by/"}, "app[0].domain"),
    ({"client_endpoint": "ftp://x"}, "app[0].client_endpoint"),
    ({"burst": 0}, "app[0].burst"),
    ({"colour": "red"}, "app[0].colour"),
])
def test_bad_app_names_the_key(change, key):
    r = raw()
    r["app"][0].update(change)
    with pytest.raises(config.ConfigError) as e:
        config.parse(r)
    assert e.value.key == key


def test_app_secret_is_not_in_repr():
    r = raw()
    r["app"][0]["client_secret"] = "s3cr3t-value-xyz"
    cfg = config.parse(r)
    assert cfg.apps["example.bitrix24.by"].client_secret == "s3cr3t-value-xyz"
    assert "s3cr3t-value-xyz" not in repr(cfg)
