import pytest

from smppd import config

from tests.rigs.config_rig import EXAMPLE, raw


def test_example_config_loads():
    cfg = config.load(EXAMPLE)
    assert cfg.shim.port == 8080 and cfg.shim.host == "127.0.0.1"
    route = cfg.routes["life"]
    assert route.window == 10 and route.bind_mode == "transceiver" and route.port == 2775
    assert cfg.senders["by_sms_main"].route == "life"
    app = cfg.apps["example.bitrix24.by"]
    assert app.rate == 2.0 and app.client_endpoint == "https://example.bitrix24.by/rest/"
    assert app.server_endpoint == "https://oauth.bitrix.info/rest/"


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


@pytest.mark.parametrize(
    "change, key, words",
    [
        ({"long_method": "udh7"}, "route.life.long_method", "udh8, udh16, sar, payload"),
        ({"latin_data_coding": 2}, "route.life.latin_data_coding", "IA5"),
        ({"resp_id_base": "octal"}, "route.life.resp_id_base", "as-is, hex, dec"),
        ({"binds": 0}, "route.life.binds", "integer from 1"),
        ({"alpha_ton": 9}, "route.life.alpha_ton", "integer from 0 to 6"),
        ({"throughput": 0.5}, "route.life.throughput", "at least 1"),
        ({"bind_mode": "duplex"}, "route.life.bind_mode", "pair"),
    ],
)
def test_operator_profile_errors_name_the_key(change, key, words):
    e = _error(lambda r: r["route"]["life"].update(change))
    assert e.key == key and words in str(e)


def test_operator_profile_defaults_and_values():
    r = raw()
    default = config.parse(r).routes["life"]
    assert (default.binds, default.long_method, default.latin_data_coding, default.resp_id_base) == (1, "udh8", 0, None)
    assert (default.alpha_ton, default.alpha_npi, default.numeric_ton, default.numeric_npi) == (5, 0, 1, 1)
    r["route"]["life"].update(bind_mode="pair", binds=2, long_method="sar", latin_data_coding=3,
                              resp_id_base="hex", receipt_id_base="dec")
    route = config.parse(r).routes["life"]
    assert (route.bind_mode, route.binds, route.long_method, route.latin_data_coding) == ("pair", 2, "sar", 3)
    assert (route.resp_id_base, route.receipt_id_base) == ("hex", "dec")


def test_commented_operator_profiles_parse():
    """The route profiles shipped commented out in config.toml (life:), MTS, A1, ...) are valid when enabled."""
    import re
    import tomllib

    profiles: dict[str, list[str]] = {}
    current = None
    for line in EXAMPLE.read_text().splitlines():
        header = re.match(r"^# \[route\.(\w+)\]", line)
        if header:
            current = profiles.setdefault(header.group(1), [])
        elif current is not None and re.match(r"^# \w+ = ", line):
            current.append(line[2:])
        elif not line.startswith("#"):
            current = None
    profiles = {name: tomllib.loads("\n".join(lines)) for name, lines in profiles.items()}
    assert {"mts", "a1"} <= set(profiles)
    for name, table in profiles.items():
        if table.get("kind", "smpp") == "smpp":
            assert table["host"] and table["system_id"], name
        r = raw()
        r["route"] = {name: table}
        r["sender"]["by_sms_main"]["route"] = name
        config.parse(r)


def test_env_file_and_daemon_section_alone(tmp_path):
    env = tmp_path / "secrets.env"
    env.write_text('# comment\n\nA=1\nB="two words"\nC=\'x=y\'\n')
    assert config.read_env_file(env) == {"A": "1", "B": "two words", "C": "x=y"}
    env.write_text("not a line\n")
    with pytest.raises(config.ConfigError, match=":1: must be NAME=value"):
        config.read_env_file(env)
    d = config.load_daemon(EXAMPLE)
    assert d.socket_path == "/run/smppd/smppd.sock" and d.metrics == ("127.0.0.1", 9465)


# --- issue 18 §4: a portal's domain may carry a port (on-premise Bitrix24) ------------------

@pytest.mark.parametrize("domain, expected", [
    ("crm.example.by:8443", "crm.example.by:8443"),
    ("CRM.Example.BY", "crm.example.by"),
    ("example.bitrix24.by", "example.bitrix24.by"),
])
def test_app_and_portal_domain_take_host_and_port(domain, expected):
    r = raw()
    r["app"][0]["domain"] = domain
    r["app"][0]["client_endpoint"] = "https://crm.example.by:8443/rest/"
    r["portal"][0]["domain"] = domain
    cfg = config.parse(r)
    assert expected in cfg.apps and cfg.portals["m1"].domain == expected


@pytest.mark.parametrize("domain", ["crm.example.by:0", "crm.example.by:99999", "crm.example.by:", "localhost",
                                    "crm.example.by/rest", "crm.example.by:84:43", "-x.example.by"])
def test_bad_domain_names_the_key(domain):
    for table in ("app", "portal"):
        r = raw()
        r[table][0]["domain"] = domain
        with pytest.raises(config.ConfigError) as e:
            config.parse(r)
        assert e.value.key == f"{table}[0].domain" and "crm.example.by:8443" in str(e.value)


def test_app_events_bounds():
    r = raw()
    assert config.parse(r).app_events == config.AppEventsConfig(max_unknown=20, unknown_max_age=7 * 86400.0)
    r["app_events"] = {"max_unknown": 3, "unknown_max_age": 3600}
    assert config.parse(r).app_events == config.AppEventsConfig(max_unknown=3, unknown_max_age=3600.0)
    for change, key in (({"max_unknown": 0}, "app_events.max_unknown"), ({"keep": 1}, "app_events.keep")):
        r["app_events"] = change
        with pytest.raises(config.ConfigError) as e:
            config.parse(r)
        assert e.value.key == key


@pytest.mark.parametrize(
    "change, key, words",
    [
        ({"receipt_id_base": "base64"}, "route.life.receipt_id_base", "auto, as-is, hex, dec"),
        ({"multipart_receipts": "middle"}, "route.life.multipart_receipts", "all, first, last, any"),
        ({"temporary_retries": 0}, "route.life.temporary_retries", "integer from 1"),
        ({"temporary_retry_age": "10m"}, "route.life.temporary_retry_age", "number"),
        ({"queue_full_pause": 0}, "route.life.queue_full_pause", "number"),
        ({"queue_full_pause": 2.0, "queue_full_pause_max": 1.0}, "route.life.queue_full_pause_max", "number ≥ 2.0"),
        ({"bind_retry_min": -1}, "route.life.bind_retry_min", "number"),
        ({"throttle_recovery": 0}, "route.life.throttle_recovery", "number"),
        ({"validity": 0}, "route.life.validity", "number"),
        ({"query_sm": "yes"}, "route.life.query_sm", "true or false"),
        ({"query_sm": True, "query_sm_delay": 7200, "validity": 3600}, "route.life.query_sm_delay", "shorter than validity"),
    ],
)
def test_bad_day_keys_errors_name_the_key(change, key, words):
    e = _error(lambda r: r["route"]["life"].update(change))
    assert e.key == key and words in str(e), str(e)


def test_bad_day_defaults_and_values():
    r = raw()
    d = config.parse(r).routes["life"]
    assert (d.receipt_id_base, d.multipart_receipts, d.validity, d.query_sm) == ("auto", "all", 172800.0, False)
    assert (d.temporary_retries, d.temporary_retry_age, d.bind_retry_min) == (5, 600.0, 5.0)
    assert (d.queue_full_pause, d.queue_full_pause_max, d.throttle_recovery) == (0.1, 5.0, 3.0)
    r["route"]["life"].update(multipart_receipts="last", query_sm=True, query_sm_delay=600, validity=86400,
                              temporary_retries=3, temporary_retry_age=120)
    route = config.parse(r).routes["life"]
    assert (route.multipart_receipts, route.query_sm, route.query_sm_delay, route.validity) == ("last", True, 600.0, 86400.0)
    assert (route.temporary_retries, route.temporary_retry_age) == (3, 120.0)
