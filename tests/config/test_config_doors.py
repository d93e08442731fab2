"""The issue-18 door keys of config.toml: defaults, and errors that name the key."""

from __future__ import annotations

import ipaddress

import pytest

from smppd import config

from tests.rigs.config_rig import raw


def test_defaults_accept_posts_without_auth_and_check_ts_a_day_either_way():
    cfg = config.parse(raw())
    assert (cfg.shim.posts_without_auth, cfg.shim.ts_window, cfg.shim.allow_from) == ("accept", 86400.0, ())


def test_allow_from_takes_addresses_and_networks():
    d = raw()
    d["shim"]["allow_from"] = ["203.0.113.0/24", "198.51.100.7", "2001:db8::/32"]
    d["shim"]["posts_without_auth"] = "refuse"
    d["shim"]["ts_window"] = 0
    shim = config.parse(d).shim
    assert shim.allow_from == (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("198.51.100.7/32"),
                               ipaddress.ip_network("2001:db8::/32"))
    assert (shim.posts_without_auth, shim.ts_window) == ("refuse", 0.0)


@pytest.mark.parametrize("key,value,message", [
    ("allow_from", ["203.0.113.0/24", "not-an-address"], "shim.allow_from: not an address"),
    ("allow_from", "203.0.113.0/24", "shim.allow_from: must be a list"),
    ("allow_from", [24], "shim.allow_from: not an address"),
    ("posts_without_auth", "maybe", "shim.posts_without_auth: must be one of accept, refuse"),
    ("ts_window", -1, "shim.ts_window: must be a number"),
    ("handler_key_previous", "short", "shim.handler_key_previous: must be at least 24"),
    ("handler_key_previous", None, "shim.handler_key_previous: is the same as handler_key"),  # None: the same
])
def test_bad_door_keys_name_the_key(key, value, message):
    d = raw()
    d["shim"][key] = d["shim"]["handler_key"] if value is None else value
    with pytest.raises(config.ConfigError, match=message):
        config.parse(d)


@pytest.mark.parametrize("key,value,message", [
    ("unknown_receipts_max", -1, "unknown_receipts_max: must be an integer"),
    ("unknown_receipts_ttl", 0, "unknown_receipts_ttl: must be a number"),
])
def test_bad_unknown_receipt_bounds_name_the_key(key, value, message):
    d = raw()
    d["route"]["ru"] = {"kind": "smsru", "api_id": "x", key: value}
    with pytest.raises(config.ConfigError, match=f"route.ru.{message}"):
        config.parse(d)


def test_unknown_receipt_bounds_default_per_route():
    d = raw()
    d["route"]["ru"] = {"kind": "smsru", "api_id": "x", "unknown_receipts_max": 50}
    route = config.parse(d).routes["ru"]
    assert (route.unknown_receipts_max, route.unknown_receipts_ttl) == (50, config.UNKNOWN_RECEIPTS_TTL)


def test_a_rotation_keeps_the_previous_handler_key_until_it_is_removed():
    d = raw()
    assert config.parse(d).shim.handler_key_previous == ""
    d["shim"]["handler_key_previous"] = "old-key-" + "o" * 24
    shim = config.parse(d).shim
    assert shim.handler_key_previous == "old-key-" + "o" * 24 and shim.handler_key_previous not in repr(shim)


@pytest.mark.parametrize("which", ["handler_key", "handler_key_previous"])
def test_a_callback_key_equal_to_a_handler_key_is_refused_naming_it(which):
    """The handler key is in every HANDLER post's URL: as a callback_key it would open /dlr/ again."""
    d = raw()
    d["shim"]["handler_key_previous"] = "old-key-" + "o" * 24
    d["route"]["ru"] = {"kind": "smsru", "api_id": "x", "callback_key": d["shim"][which]}
    with pytest.raises(config.ConfigError, match="route.ru.callback_key: must not be the shim's handler_key"):
        config.parse(d)
    d["route"]["ru"]["callback_key"] = "cb-key-" + "c" * 24
    assert config.parse(d).routes["ru"].callback_key == "cb-key-" + "c" * 24
