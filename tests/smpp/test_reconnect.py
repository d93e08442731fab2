"""Issue 14.1-14.2: how soon one bind reconnects, from how the last attempt ended; no sockets."""

from __future__ import annotations

import random

from smppd.smpp.reconnect import Outcome, ReconnectBackoff


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
