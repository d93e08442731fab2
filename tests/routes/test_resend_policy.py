"""ResendPolicy, without sockets: never resend what the provider took (issue 14 item 9)."""

from __future__ import annotations

import random

from smppd.routes.policy.resend import Ask, Keep, Resend, ResendPolicy


def policy(can_ask: bool = True) -> ResendPolicy:
    return ResendPolicy(can_ask=can_ask, retry_min=1.0, retry_max=30.0, duplicate_window=60.0,
                        rng=random.Random(1))


def test_a_request_that_never_arrived_is_resent_after_a_growing_backoff():
    p = policy()
    first = p.unavailable([1, 2], now=100.0)
    second = p.unavailable([1, 2], now=200.0)
    assert isinstance(first, Resend) and first.ids == (1, 2)
    assert 0.8 <= first.at - 100.0 <= 1.2 and 1.6 <= second.at - 200.0 <= 2.4
    assert p.sendable([1, 2]) == (1, 2)


def test_a_lost_answer_is_asked_about_and_the_message_is_held_until_the_provider_says():
    p = policy()
    assert p.lost([1, 2], now=10.0) == Ask((1, 2), 10.0)
    assert p.sendable([1, 2]) == ()  # in doubt: nothing may go
    asks = [p.ask_failed([1, 2], now=10.0 + i) for i in range(12)]  # status.php down for a long while
    assert all(isinstance(a, Ask) for a in asks)  # never a Resend, however long it takes
    assert asks[-1].at - 21.0 <= 30.0 * 1.2  # the back-off is capped
    assert p.sendable([1, 2]) == ()
    decisions = p.asked({1: True, 2: False}, now=50.0)
    assert decisions == [Keep((1,)), Resend((2,), 50.0)]  # it had 1; 2 never arrived: send it now
    assert p.sendable([1, 2]) == (1, 2)  # the route keeps 1 as accepted; it does not send it


def test_a_provider_that_cannot_be_asked_gets_the_message_again():
    p = policy(can_ask=False)
    d = p.lost([7], now=0.0)
    assert isinstance(d, Resend) and d.ids == (7,)  # at-least-once, as DESIGN.md decides (SMS.ru)


def test_duplicate_request_means_the_provider_has_it_never_send_ask():
    p = policy()
    assert p.duplicate([3], now=5.0) == Ask((3,), 5.0)
    assert p.sendable([3]) == ()
    assert p.asked({3: True}, now=6.0) == [Keep((3,))]


def test_duplicate_then_no_such_message_waits_out_the_duplicate_window():
    """Error 9 is also "15+ concurrent requests": a definite "not here" allows one more send, later."""
    p = policy()
    p.duplicate([3], now=5.0)
    assert p.asked({3: False}, now=6.0) == [Resend((3,), 6.0 + 30.0)]  # the window, capped by retry_max


def test_a_settled_message_is_never_sent_again_whatever_comes_later():
    p = policy()
    p.lost([4, 5], now=0.0)
    p.settle([4])  # a callback said delivered while we were still asking
    assert p.settled(4) and p.sendable([4, 5]) == ()
    assert p.asked({4: False, 5: False}, now=1.0) == [Resend((5,), 1.0)]  # 4 is not resent
    assert p.sendable([4, 5]) == (5,)
    p.settle([5])  # cancelled by the admin while its resend waited
    assert p.sendable([4, 5]) == ()


def test_settled_ids_are_bounded():
    p = ResendPolicy(can_ask=True, settled_memory=3)
    p.settle(range(10))
    assert [p.settled(i) for i in range(10)] == [False] * 7 + [True] * 3


def test_answers_clear_doubt_and_attempts():
    p = policy()
    p.unavailable([1], 0.0)
    p.unavailable([1], 0.0)
    p.answered([1])
    d = p.unavailable([1], 100.0)
    assert 0.8 <= d.at - 100.0 <= 1.2  # the back-off starts over for the next trouble
