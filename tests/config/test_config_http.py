"""Config of the HTTP provider routes: kinds smsru and smsc, errors that name their key."""

import pytest

from smppd import config

from tests.rigs.config_rig import with_route


def test_smsru_route_with_defaults():
    cfg = config.parse(with_route("ru", {"kind": "smsru", "api_id": "SECRET-API-ID"}))
    ru = cfg.routes["ru"]
    assert isinstance(ru, config.SmsRuRouteConfig)
    assert ru.base_url == "https://sms.ru/" and ru.poll_after == 300.0 and ru.poll_interval == 60.0
    assert "SECRET-API-ID" not in repr(cfg)


def test_smsc_route_with_login_or_apikey():
    cfg = config.parse(with_route("sc", {"kind": "smsc", "login": "me", "password": "SECRET-PSW", "viber": True,
                                         "viber_fallback": 120, "batch_interval": 1.5}))
    sc = cfg.routes["sc"]
    assert isinstance(sc, config.SmscRouteConfig)
    assert sc.viber and sc.viber_fallback == 120.0 and sc.batch_size == 100 and sc.batch_interval == 1.5
    assert sc.base_url == "https://smsc.ru/sys/" and "SECRET-PSW" not in repr(cfg)
    cfg = config.parse(with_route("sc", {"kind": "smsc", "apikey": "SECRET-KEY"}))
    assert cfg.routes["sc"].apikey == "SECRET-KEY" and "SECRET-KEY" not in repr(cfg)


@pytest.mark.parametrize("table,key", [
    ({"kind": "smsru"}, "route.x.api_id"),
    ({"kind": "smsru", "api_id": "k", "ttl": 2000}, "route.x.ttl"),
    ({"kind": "smsru", "api_id": "k", "translit": "yes"}, "route.x.translit"),
    ({"kind": "smsru", "api_id": "k", "host": "h"}, "route.x.host"),
    ({"kind": "smsru", "api_id": "k", "callback_key": "short"}, "route.x.callback_key"),
    ({"kind": "smsru", "api_id": "k", "base_url": "ftp://x"}, "route.x.base_url"),
    ({"kind": "smsru", "api_id": "k", "rate": -1}, "route.x.rate"),
    ({"kind": "smsc"}, "route.x"),
    ({"kind": "smsc", "login": "a"}, "route.x"),
    ({"kind": "smsc", "apikey": "k", "login": "a", "password": "b"}, "route.x.apikey"),
    ({"kind": "smsc", "apikey": "k", "batch_size": 101}, "route.x.batch_size"),
    ({"kind": "smsc", "apikey": "k", "concurrency": 0}, "route.x.concurrency"),
    ({"kind": "smsc", "apikey": "k", "api_id": "k"}, "route.x.api_id"),
    ({"kind": "kannel"}, "route.x.kind"),
])
def test_bad_http_routes_name_the_key(table, key):
    with pytest.raises(config.ConfigError) as e:
        config.parse(with_route("x", table))
    assert e.value.key == key
