"""Submit latency: every answered submit_sm is observed once, on its own route's series."""

from __future__ import annotations

from prometheus_client import REGISTRY

from smppd.ops import metrics


def _count(route: str) -> float:
    return REGISTRY.get_sample_value("smppd_submit_latency_seconds_count", {"route": route}) or 0.0


def test_each_answered_submit_is_observed_once_per_route() -> None:
    before_a, before_b = _count("lat-a"), _count("lat-b")
    for ref in range(3):
        metrics.submit_sent("lat-a", ref)
    metrics.submit_sent("lat-b", 0)
    for ref in range(3):
        metrics.submit_answered("lat-a", ref)  # the labelled child is cached after the first
    metrics.submit_answered("lat-a", 0)  # answered twice (late resp): not observed again
    metrics.submit_answered("lat-a", 99)  # never sent: nothing to observe
    metrics.submit_answered("lat-b", 0)
    assert (_count("lat-a") - before_a, _count("lat-b") - before_b) == (3.0, 1.0)
