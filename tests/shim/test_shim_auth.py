"""shim/auth.py's sans-I/O rules: who the peer is, and which ts is fresh."""

from __future__ import annotations

import ipaddress

import pytest

from shim.auth import DoorConfig, Doors, peer_address, ts_fresh

NOW = 1_790_000_000.0


@pytest.mark.parametrize("remote,headers,expected", [
    ("203.0.113.9", {}, "203.0.113.9"),
    ("203.0.113.9", {"X-Forwarded-For": "198.51.100.1"}, "203.0.113.9"),  # not from the proxy: ignored
    ("127.0.0.1", {"X-Forwarded-For": "198.51.100.1"}, "198.51.100.1"),
    ("127.0.0.1", {"X-Forwarded-For": "203.0.113.9, 198.51.100.1"}, "198.51.100.1"),  # nginx's own entry is last
    ("::1", {"X-Forwarded-For": "2001:db8::7"}, "2001:db8::7"),
    ("127.0.0.1", {}, "127.0.0.1"),
    ("127.0.0.1", {"X-Forwarded-For": "junk"}, None),
    (None, {}, None),
])
def test_peer_address(remote, headers, expected):
    got = peer_address(remote, headers)
    assert got == (ipaddress.ip_address(expected) if expected else None)


@pytest.mark.parametrize("ts,window,answer", [
    (int(NOW), 86400.0, None),
    (int(NOW) - 86400, 86400.0, None),
    (int(NOW) + 86400, 86400.0, None),
    (int(NOW) - 86401, 86400.0, (403, "stale")),
    (int(NOW) + 86401, 86400.0, (403, "stale")),
    (978307200, 86400.0, (403, "stale")),
    (None, 86400.0, (400, "bad_request")),
    (int(NOW) * 1000 + 999, 86400.0, None),  # milliseconds: read, not refused
    ((int(NOW) - 2 * 86400) * 1000, 86400.0, (403, "stale")),
    (None, None, None),  # the window off: nothing checked
    (978307200, 0.0, None),
])
def test_ts_fresh(ts, window, answer):
    refusal = ts_fresh(ts, NOW, window)
    assert (None if refusal is None else (refusal.status, refusal.error)) == answer
    if refusal is not None:
        assert refusal.field == "ts"


def test_rotation_replaces_every_key_at_once():
    doors = Doors(DoorConfig(handler_key="a" * 24, route_keys={"smsru": "b" * 24}))
    doors.rotate(DoorConfig(handler_key="c" * 24, route_keys={"smsru": "d" * 24}))
    assert doors.config.handler_key == "c" * 24 and doors.config.route_keys == {"smsru": "d" * 24}
    with pytest.raises(ValueError):
        doors.rotate(DoorConfig(handler_key=""))


def _request(path: str):
    from aiohttp.test_utils import make_mocked_request

    return make_mocked_request("POST", path)


def test_no_handler_key_opens_a_callback_door():
    """issue 18: /dlr/ takes the route's own callback_key only; a route without one is closed."""
    doors = Doors(DoorConfig(handler_key="h" * 24, route_keys={"smsru": "r" * 24, "smsc": ""},
                             keyless_routes=frozenset({"smsc"}), previous_key="p" * 24))
    assert doors.check_route(_request("/dlr/smsru?key=" + "r" * 24), "smsru") is None
    for route, key in (("smsru", "h" * 24), ("smsru", "p" * 24), ("smsc", "h" * 24), ("smsc", ""),
                       ("nosuch", "h" * 24)):
        refusal = doors.check_route(_request(f"/dlr/{route}?key={key}"), route)
        assert refusal is not None and (refusal.status, refusal.field) == (401, "key"), (route, key)


def test_the_previous_handler_key_opens_the_bitrix24_doors_until_it_is_removed():
    doors = Doors(DoorConfig(handler_key="h" * 24, previous_key="p" * 24))
    for key in ("h" * 24, "p" * 24):
        assert doors.check_bitrix24(_request("/bitrix24/x?key=" + key)) is None
    assert doors.previous_key_posts == 1
    assert doors.check_bitrix24(_request("/bitrix24/x?key=" + "q" * 24)) is not None
    doors.rotate(DoorConfig(handler_key="h" * 24))
    assert doors.check_bitrix24(_request("/bitrix24/x?key=" + "p" * 24)) is not None
