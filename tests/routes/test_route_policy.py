"""Route policy without sockets (issue 15 item 5): every rule fed events and ``now`` by hand.

The cap over a sliding second, queue-full pauses and throttle cuts (issue 14.1-14.3),
the bounded requeue of temporary errors (14.5), the spill of a backlog to the store.
The HTTP resend rules are tests/routes/test_resend_policy.py; reconnects tests/smpp/test_reconnect.py.
"""

from __future__ import annotations

import pytest

from smppd.routes.policy.backlog import Backlog
from smppd.routes.policy.cap import SlidingWindowLimiter
from smppd.routes.policy.flow import FlowPolicy
from smppd.routes.policy.submit import (
    CAP_SLACK, Fail, Paused, Requeue, RetryLater, SlowedDown, SubmitPolicy, TEMPORARY_RETRY_DELAY,
)

ESME_RINVBNDSTS, ESME_RMSGQFUL, ESME_RTHROTTLED, ESME_RSYSERR, ESME_RINVDSTADR = 0x04, 0x14, 0x58, 0x08, 0x0B


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


# --- the cap over any sliding second (was tests/test_throttle.py) -------------------------


def test_never_more_than_cap_in_any_second():
    t = 100.0
    lim = SlidingWindowLimiter(10)
    sent = []
    while t < 103.0:
        if lim.delay(t) == 0:
            lim.record(t)
            sent.append(t)
        else:
            t += 0.001
    for i, s in enumerate(sent):
        in_window = [x for x in sent[i:] if x < s + 1.0]
        assert len(in_window) <= 10
    assert len(sent) >= 30  # and it does send at the cap


def test_delay_is_until_the_oldest_send_leaves_the_window():
    lim = SlidingWindowLimiter(2)
    lim.record(100.0)
    lim.record(100.3)
    assert abs(lim.delay(100.3) - 0.7) < 1e-9


def test_zero_means_no_cap():
    lim = SlidingWindowLimiter(0)
    for _ in range(1000):
        lim.record(1.0)
    assert lim.delay(1.0) == 0


def test_limiter_cap_can_shrink_and_grow_on_the_fly():  # was in tests/smpp/test_smpp_hardening.py
    lim = SlidingWindowLimiter(10)
    for _ in range(6):
        lim.record(0.0)
    lim.set_cap(5)
    assert lim.delay(0.0) == 1.0, "the last five sends already fill the smaller cap"
    lim.set_cap(8)
    assert lim.delay(0.0) == 0.0


# --- multiplicative decrease (the AIMD tests of tests/smpp/test_smpp_hardening.py, on FlowPolicy,
# which replaced the unused Aimd class: its +1/value climb per success took minutes) -------


def test_throttle_halves_once_per_hold_and_never_climbs_past_the_configured_cap():
    p = FlowPolicy(16, 16, hold=1.0, recovery=3.0)
    assert p.throttled(0.0) and p.limits(0.0).rate == 8
    assert not p.throttled(0.5), "refusals of one burst are one event"
    assert p.limits(0.5).rate == 8
    before = p.limits(1.5).rate
    assert p.throttled(1.5) and p.limits(1.5).rate == pytest.approx(before / 2)
    assert p.throttle_cuts == 2
    assert all(p.limits(1.5 + i / 10).rate <= 16 for i in range(60)), "never past the configured ceiling"
    for t in (5.5, 10.0, 100.0):
        assert p.limits(t).rate == 16, "and back at it within hold + recovery"


def test_throttle_never_cuts_below_its_floor():
    p = FlowPolicy(4, 4, hold=0.0, recovery=3.0, rate_floor=1)
    for _ in range(10):  # with no hold every refusal cuts again
        assert p.throttled(9.0)
    assert p.limits(9.0).rate == 1 and p.limits(9.0).window == 1


# --- SubmitPolicy: the verdict on each refused submit_sm ------------------------------------


def submit_policy(**kw) -> SubmitPolicy:
    base = dict(temporary_retries=3, temporary_retry_age=60.0, pause_min=0.1, pause_max=5.0, recovery=3.0)
    base.update(kw)
    return SubmitPolicy(40, 10, **base)


def test_queue_full_pauses_once_and_is_not_a_retry_of_the_part():
    p = submit_policy(temporary_retries=1)
    v = p.refused(1, 0, ESME_RMSGQFUL, True, 10.0)
    assert v == Paused(pytest.approx(10.1), True)
    assert p.refused(2, 0, ESME_RMSGQFUL, True, 10.01) == Paused(pytest.approx(10.1), False), "one pause per burst"
    assert p.resume_at(10.05) == pytest.approx(10.1) and p.window == 1, "then one submit probes"
    for t in (11.0, 12.0, 13.0):  # far more queue-fulls than temporary_retries: the part never fails
        assert isinstance(p.refused(1, 0, ESME_RMSGQFUL, True, t), Paused)
    p.accepted(1, 0, 14.0)
    p.resume_at(14.0)
    assert p.window == 10


def test_throttled_cuts_rate_window_and_cap_once_per_burst():
    p = submit_policy()
    v = p.refused(1, 0, ESME_RTHROTTLED, True, 5.0)
    assert isinstance(v, SlowedDown) and v.cut is not None and (v.cut.rate, v.cut.window) == (20, 5)
    assert p.refused(2, 0, ESME_RTHROTTLED, True, 5.1) == SlowedDown(None)
    assert p.resume_at(5.5) <= 5.5 and p.window == 5 and p.cap.cap == 20
    for _ in range(20):
        p.sent(5.5)
    assert p.cap_delay(5.6) == pytest.approx(1.0 + CAP_SLACK - 0.1), "the cut cap counts over 1.05 s"
    p.resume_at(9.0)
    assert (p.window, p.cap.cap) == (10, 40), "recovered within seconds"


def test_temporary_errors_retry_the_same_part_a_bounded_number_of_times():
    p = submit_policy(temporary_retries=2)
    assert p.refused(7, 1, ESME_RSYSERR, True, 0.0) == RetryLater(TEMPORARY_RETRY_DELAY, 1)
    assert p.refused(7, 1, ESME_RSYSERR, True, 1.0) == RetryLater(1.0 + TEMPORARY_RETRY_DELAY, 2)
    assert p.refused(7, 2, ESME_RSYSERR, True, 1.0) == RetryLater(1.0 + TEMPORARY_RETRY_DELAY, 1), "per part"
    assert p.refused(7, 1, ESME_RSYSERR, True, 2.0) == Fail(3, 2.0)
    assert p.refused(7, 1, ESME_RSYSERR, True, 3.0) == RetryLater(3.0 + TEMPORARY_RETRY_DELAY, 1), "a fresh count"


def test_temporary_errors_retry_for_a_bounded_time():
    p = submit_policy(temporary_retries=100, temporary_retry_age=5.0)
    assert isinstance(p.refused(1, 0, ESME_RSYSERR, True, 0.0), RetryLater)
    assert isinstance(p.refused(1, 0, ESME_RSYSERR, True, 4.9), RetryLater)
    assert p.refused(1, 0, ESME_RSYSERR, True, 6.0) == Fail(3, 6.0)


def test_an_accepted_part_or_a_cancel_starts_its_count_again():
    p = submit_policy(temporary_retries=1)
    assert isinstance(p.refused(1, 0, ESME_RSYSERR, True, 0.0), RetryLater)
    p.accepted(1, 0, 1.0)
    assert isinstance(p.refused(1, 0, ESME_RSYSERR, True, 2.0), RetryLater)
    p.forget({1})
    assert isinstance(p.refused(1, 0, ESME_RSYSERR, True, 3.0), RetryLater)


def test_final_errors_fail_at_once_and_a_dead_session_requeues():
    p = submit_policy()
    assert p.refused(1, 0, ESME_RINVDSTADR, False, 0.0) == Fail(0, 0.0)
    assert p.refused(1, 0, ESME_RINVBNDSTS, True, 0.0) == Requeue()


def test_retune_takes_the_new_cap_and_window_at_once():
    from smppd.config import SmppRouteConfig

    p = submit_policy()
    for _ in range(40):
        p.sent(0.0)
    assert p.cap_delay(0.0) > 0
    p.retune(SmppRouteConfig(name="r", host="h", port=1, system_id="s", password="p", throughput=500, window=20))
    p.resume_at(0.0)
    assert (p.cap.cap, p.window, p.cap_delay(0.0)) == (500, 20, 0.0)


# --- Backlog: what waits in memory, what in the store ---------------------------------------


def test_a_full_queue_leaves_newer_messages_in_the_store_and_keeps_their_order():
    b = Backlog(memory=10, page=4)
    assert all(b.admit(i, depth=i - 1) for i in range(1, 11))
    assert not b.admit(11, depth=10) and b.spilled
    assert not b.admit(12, depth=0), "older ones still wait in the store: so does this one"
    assert b.admit(5, depth=10), "an older id (a hold released) is never left behind"
    assert b.left_in_store == 2


def test_refills_are_paged_one_at_a_time_until_caught_up():
    b = Backlog(memory=10, page=4)
    for i in range(1, 11):
        b.admit(i, depth=i - 1)
    b.admit(11, depth=10)
    assert b.refill(depth=6) is None, "not before the queue is half empty"
    r = b.refill(depth=4)
    assert r is not None and (r.after_id, r.limit) == (10, 4)
    assert b.refill(depth=0) is None, "one read at a time"
    b.refilled(r, [11, 12, 13, 14])  # a full page: more may wait
    assert b.spilled and b.loaded_max == 14
    r = b.refill(depth=0)
    b.admit(20, depth=0)  # committed while the page was read: the next page gets it
    b.refilled(r, [15])
    assert b.spilled
    r = b.refill(depth=0)
    b.failed()  # the store was busy: the next drain asks again
    r = b.refill(depth=0)
    assert r is not None and r.after_id == 15
    b.refilled(r, [20])
    assert not b.spilled and b.admit(21, depth=0)


def test_a_start_that_read_a_full_page_knows_more_waits():
    b = Backlog(memory=8)
    b.loaded(8)
    assert b.spilled
    b2 = Backlog(memory=8)
    b2.loaded(7)
    assert not b2.spilled


def test_next_deadline_is_when_the_limits_change_by_themselves():
    p = submit_policy()
    assert p.next_deadline(0.0) is None, "nothing pending: no timer"
    p.refused(1, 0, ESME_RMSGQFUL, True, 10.0)
    assert p.next_deadline(10.05) == pytest.approx(10.1), "the pause ends"
    p = submit_policy()
    p.refused(1, 0, ESME_RTHROTTLED, True, 5.0)
    assert p.next_deadline(5.1) == pytest.approx(5.25), "the breather ends first"
    assert p.next_deadline(5.3) == pytest.approx(9.0), "then the climb is done (hold 1 s + recovery 3 s)"
