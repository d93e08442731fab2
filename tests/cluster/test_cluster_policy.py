"""The lease policy without sockets: when a node runs a route, and that it stops before anyone may take over."""

from __future__ import annotations

import random

import pytest

from smppd.cluster.policy import LeasePolicy, LeaseTiming

T = LeaseTiming(ttl=5.0, renew=1.0, retry=1.0, margin=2.0)


def test_acquired_starts_and_renews_every_renew_interval() -> None:
    p = LeasePolicy(T)
    step = p.acquired(now=10.0, token=7, sent=9.9)
    assert step.start and not step.stop and p.held and p.token == 7
    assert step.next_at == 11.0
    assert p.fence_at == pytest.approx(9.9 + 5 - 2)


def test_renewals_push_the_deadline_and_nothing_stops() -> None:
    p = LeasePolicy(T)
    p.acquired(0.0, 1, 0.0)
    for t in range(1, 30):
        step = p.renewed(float(t) + 0.05, float(t))
        assert not step.stop and not step.start and p.held
    assert p.fence_at == pytest.approx(29 + 3)


def test_failed_renewals_fence_the_node_before_the_lease_can_expire() -> None:
    p = LeasePolicy(T)
    p.acquired(0.0, 1, 0.0)
    p.renewed(1.0, 1.0)  # the row now expires no earlier than 1 + 5 = 6.0 (database clock)
    t, stopped_at = 1.0, None
    while stopped_at is None and t < 10:
        t += 0.1
        step = p.renew_failed(t)
        if step.stop:
            stopped_at, reason = t, step.reason
    assert stopped_at is not None and reason == "fenced"
    assert stopped_at == pytest.approx(4.0, abs=0.11)
    assert stopped_at <= 6.0 - T.margin + 0.11  # a margin to unbind before anyone may bind


def test_a_short_connection_loss_costs_nothing() -> None:
    p = LeasePolicy(T)
    p.acquired(0.0, 1, 0.0)
    step = p.connection_lost(0.5)
    assert not step.stop and p.held and not p.connected
    assert step.next_at <= 1.5  # tries again soon, not a whole renew later
    step = p.renewed(2.0, 1.8)  # reconnected, renewed the same row
    assert not step.stop and p.held and p.connected and p.token == 1


def test_a_long_connection_loss_fences_at_the_deadline_even_without_events() -> None:
    p = LeasePolicy(T)
    p.acquired(0.0, 3, 0.0)
    p.connection_lost(0.2)
    assert not p.tick(2.9).stop
    step = p.tick(3.0)
    assert step.stop and step.reason == "fenced" and not p.held and p.token is None


def test_the_row_taken_or_gone_stops_at_once() -> None:
    p = LeasePolicy(T)
    p.acquired(0.0, 1, 0.0)
    step = p.lost(0.5)
    assert step.stop and step.reason == "lost" and not p.held
    assert not p.lost(0.6).stop  # one stop per loss


def test_an_answer_that_came_too_late_never_starts() -> None:
    p = LeasePolicy(T)
    step = p.acquired(now=3.5, token=2, sent=0.0)  # the INSERT took 3.5 s: its lease is nearly over
    assert not step.start and not step.stop and not p.held


def test_timing_that_would_fence_a_healthy_node_is_refused() -> None:
    with pytest.raises(ValueError, match="renew"):
        LeaseTiming(ttl=3.0, renew=1.5, margin=2.0)
    with pytest.raises(ValueError, match="margin"):
        LeaseTiming(ttl=5.0, renew=1.0, margin=0.0)


def test_random_histories_never_run_past_the_earliest_takeover() -> None:
    """Whatever the mix of renewals, failures and losses, while the policy says "held"
    the local time is before ``last successful send + ttl - margin``: the earliest moment
    another node may take the lease (by the database's clock) is later still."""
    rng = random.Random(17)
    for _ in range(300):
        p = LeasePolicy(T)
        now = 0.0
        p.acquired(now, 1, now)
        last_sent = now
        for _ in range(60):
            now += rng.uniform(0.05, 1.5)
            event = rng.random()
            if event < 0.5:
                sent = now - rng.uniform(0, 0.5)
                if p.held:
                    p.renewed(now, sent)
                    last_sent = max(last_sent, sent)
                else:
                    p.acquired(now, (p.token or 0) + 1, sent)
                    last_sent = sent
            elif event < 0.8:
                p.renew_failed(now)
            elif event < 0.95:
                p.connection_lost(now)
            else:
                p.tick(now)
            if p.held:
                assert now < last_sent + T.ttl - T.margin + 1e-9
