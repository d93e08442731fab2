import tomllib
from pathlib import Path

import pytest

from smppd import config

EXAMPLE = Path(__file__).parent.parent / "config.toml"


def raw() -> dict:
    with open(EXAMPLE, "rb") as f:
        return tomllib.load(f)


def test_example_config_loads():
    cfg = config.load(EXAMPLE)
    assert cfg.shim.port == 8080 and cfg.shim.host == "127.0.0.1"
    route = cfg.routes["life"]
    assert route.window == 10 and route.bind_mode == "transceiver" and route.port == 2775
    assert cfg.senders["by_sms_main"].route == "life"
    assert cfg.portals[next(iter(cfg.portals))].rate == 2.0


def test_metrics_ports_are_loopback_and_optional():
    cfg = config.load(EXAMPLE)
    assert cfg.daemon.metrics == ("127.0.0.1", 9465) and cfg.shim.metrics == ("127.0.0.1", 9466)
    r = raw()
    r["daemon"].pop("metrics")
    r["shim"]["metrics"] = "[::1]:9466"
    cfg = config.parse(r)
    assert cfg.daemon.metrics is None and cfg.shim.metrics == ("::1", 9466)


def test_secrets_can_come_from_the_environment(monkeypatch):
    r = raw()
    r["route"]["life"]["password"] = "${SMPPD_LIFE_PASSWORD}"
    r["shim"]["handler_key"] = "${SMPPD_HANDLER_KEY}"
    monkeypatch.setenv("SMPPD_LIFE_PASSWORD", "s3cr3t")
    monkeypatch.setenv("SMPPD_HANDLER_KEY", "k" * 32)
    cfg = config.parse(r)
    assert cfg.routes["life"].password == "s3cr3t" and cfg.shim.handler_key == "k" * 32
    monkeypatch.delenv("SMPPD_LIFE_PASSWORD")
    with pytest.raises(config.ConfigError) as e:
        config.parse(r)
    assert e.value.key == "route.life.password" and "SMPPD_LIFE_PASSWORD is not set" in str(e.value)
    monkeypatch.setenv("SMPPD_LIFE_PASSWORD", "waytoolongpassword")
    with pytest.raises(config.ConfigError, match="route.life.password: at most 8"):
        config.parse(r)


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
        (lambda r: r["daemon"].update(metrics="0.0.0.0:9465"), "daemon.metrics", "loopback"),
        (lambda r: r["shim"].update(metrics="9466"), "shim.metrics", "host:port"),
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


def test_env_file_and_daemon_section_alone(tmp_path):
    env = tmp_path / "secrets.env"
    env.write_text('# comment\n\nA=1\nB="two words"\nC=\'x=y\'\n')
    assert config.read_env_file(env) == {"A": "1", "B": "two words", "C": "x=y"}
    env.write_text("not a line\n")
    with pytest.raises(config.ConfigError, match=":1: must be NAME=value"):
        config.read_env_file(env)
    d = config.load_daemon(EXAMPLE)
    assert d.socket_path == "/run/smppd/smppd.sock" and d.metrics == ("127.0.0.1", 9465)
