"""Issue 14.1-14.3: the sans-I/O flow policy and reconnect back-off, second by second, no sockets."""

from __future__ import annotations

import random

import pytest

from smppd.smpp.flow import FlowPolicy, Outcome, ReconnectBackoff


def test_queue_full_pauses_without_touching_the_rate():
    p = FlowPolicy(50, 10, pause_min=0.1, pause_max=5.0)
    assert p.queue_full(10.0) == pytest.approx(10.1)
    limits = p.limits(10.05)
    assert (limits.rate, limits.resume_at) == (50, pytest.approx(10.1))
    assert p.limits(10.2).rate == 50, "resumes at the rate it had"
    assert p.limits(10.2).window == 1, "one submit probes whether the queue drained"
    p.accepted(10.3)
    assert p.limits(10.3).window == 10, "and the whole window once it did"


def test_queue_full_pause_grows_only_while_it_repeats():
    p = FlowPolicy(50, 10, pause_min=0.1, pause_max=0.5)
    pauses = []
    now = 0.0
    for _ in range(5):  # every probe after a pause is refused again
        resume = p.queue_full(now)
        pauses.append(round(resume - now, 3))
        now = resume
    assert pauses == [0.1, 0.2, 0.4, 0.5, 0.5]
    p.accepted(now + 0.01)  # the queue drained: the next burst starts short again
    assert p.queue_full(now + 1.0) - (now + 1.0) == pytest.approx(0.1)


def test_refusals_of_submits_already_in_flight_are_the_same_event():
    p = FlowPolicy(0, 10, pause_min=0.1)
    first = p.queue_full(1.0)
    assert p.queue_full(1.01) == first and p.queue_full(1.05) == first
    assert p.queue_full_pauses == 1


def test_throttle_halves_then_recovers_to_the_configured_rate_within_seconds():
    p = FlowPolicy(40, 10, hold=1.0, recovery=3.0)
    assert p.throttled(5.0)
    assert not p.throttled(5.5), "refusals within hold are one event"
    assert p.limits(5.0).resume_at == pytest.approx(5.25), "a short breather first"
    assert p.limits(5.5).rate == 20 and p.limits(5.5).window == 5
    assert p.limits(6.0).rate == 20  # held for a second
    assert p.limits(7.5).rate == pytest.approx(30)  # half way up
    assert p.limits(9.0).rate == 40 and p.limits(9.0).window == 10, "recovered 4 s after the last throttle"
    assert p.next_deadline(9.0) is None


def test_a_second_throttle_during_recovery_cuts_from_where_it_was():
    p = FlowPolicy(40, 10, hold=1.0, recovery=3.0)
    p.throttled(0.0)
    p.throttled(2.5)  # at 30/s, half way up
    assert p.limits(2.5).rate == pytest.approx(15)
    assert p.limits(6.5).rate == 40


def test_uncapped_route_learns_a_cap_from_what_it_sent_then_is_uncapped_again():
    p = FlowPolicy(0, 10, hold=1.0, recovery=2.0, learned_floor=10)
    for i in range(100):
        p.sent(i / 100)
    assert p.throttled(1.0)
    assert p.limits(1.0).rate == pytest.approx(50, abs=1)  # half of the ~100 sent in the last second
    assert p.limits(4.0).rate == 0, "recovered: no cap at all again"


def test_backoff_is_prompt_after_a_bind_that_was_up():
    b = ReconnectBackoff(1.0, 60.0, 5.0, rng=random.Random(1))
    for _ in range(4):
        b.next_delay(Outcome.CONNECT_FAILED)  # an outage before: the delay had grown
    for _ in range(10):  # ten maintenance unbinds in a row
        assert b.next_delay(Outcome.WAS_BOUND) <= 1.0


def test_refused_binds_back_off_long_and_credentials_wait_the_maximum():
    b = ReconnectBackoff(1.0, 60.0, 5.0, rng=random.Random(2))
    delays = [b.next_delay(Outcome.BIND_REFUSED) for _ in range(5)]
    for n, d in enumerate(delays):
        assert 5.0 * 2 ** n / 2 <= d <= min(60.0, 5.0 * 2 ** n)
    # a stale session held for 30 s: at most a handful of attempts, even with the shortest jitter
    t, attempts = 0.0, 1
    b = ReconnectBackoff(1.0, 60.0, 5.0, rng=random.Random(3))
    while True:
        t += b.next_delay(Outcome.BIND_REFUSED)
        if t > 30:
            break
        attempts += 1
    assert attempts <= 5
    assert b.next_delay(Outcome.CREDENTIALS) >= 30.0
