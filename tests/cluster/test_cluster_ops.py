"""What an operator sees of several nodes: `smppd status`, the metrics (no sockets)."""

from __future__ import annotations

from typing import Any, Mapping

from prometheus_client.core import Metric

from smppd.cli.admin import render_status
from smppd.ops.metrics import cluster_families

STATUS: dict[str, Any] = {
    "routes": {
        "life": {"kind": "smpp", "up": True, "queue": 0, "inflight": 2, "window_size": 10, "owner": "a"},
        "mts": {"kind": "smpp", "up": False, "queue": 0, "inflight": 0, "window_size": 10, "owner": "b"},
        "a1": {"kind": "smpp", "up": False, "queue": 0, "inflight": 0, "window_size": 10, "owner": None},
    },
    "pushers": {},
    "store": {},
    "cluster": {
        "node": "a", "owned": ["route:life"], "lease_changes": {"gained": 1},
        "leases": [
            {"name": "route:a1", "node": "b", "token": 4, "live": False, "expires_in": -30.0, "held_for": 90.0},
            {"name": "route:life", "node": "a", "token": 7, "live": True, "expires_in": 5.2, "held_for": 600.0},
            {"name": "route:mts", "node": "b", "token": 3, "live": True, "expires_in": 4.9, "held_for": 120.0},
        ],
    },
}


def test_status_names_the_owner_of_each_route_and_the_lease_table() -> None:
    text = render_status(STATUS)
    lines = {line.split()[0]: line for line in text.splitlines() if line.split()}
    assert lines["life"].split()[1] == "up"
    assert lines["mts"].split()[1] == "@b"  # another node runs it: not DOWN here
    assert lines["a1"].split()[1] == "@-"  # nobody runs it
    assert "this node: a" in text
    assert "route:life" in lines and lines["route:life"].split()[1:3] == ["a", "7"]
    assert "(none; was b)" in lines["route:a1"]


class Node:
    node = "a"
    connection_losses = 2

    def leases(self) -> Mapping[str, bool]:
        return {"route:life": True, "route:mts": False, "portal:abc": True}

    def lease_changes(self) -> Mapping[tuple[str, str], int]:
        return {("route:life", "gained"): 3, ("route:life", "fenced"): 1}


def _samples(families: list[Metric]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_each_node_exports_its_name_and_every_lease_it_contends_for() -> None:
    got = _samples(list(cluster_families("a", Node())))
    assert got[("smppd_node_info", (("clustered", "1"), ("node", "a")))] == 1.0
    assert got[("smppd_lease_held", (("kind", "route"), ("lease", "route:life"), ("node", "a")))] == 1.0
    assert got[("smppd_lease_held", (("kind", "route"), ("lease", "route:mts"), ("node", "a")))] == 0.0
    assert got[("smppd_lease_held", (("kind", "portal"), ("lease", "portal:abc"), ("node", "a")))] == 1.0
    assert got[("smppd_lease_changes_total", (("change", "gained"), ("lease", "route:life"), ("node", "a")))] == 3
    assert got[("smppd_lease_connection_losses_total", (("node", "a"),))] == 2


def test_one_node_exports_its_name_and_no_lease() -> None:
    got = _samples(list(cluster_families("vps1", None)))
    assert list(got) == [("smppd_node_info", (("clustered", "0"), ("node", "vps1")))]
