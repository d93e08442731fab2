from smppd.routes.throttle import SlidingWindowLimiter


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_never_more_than_cap_in_any_second():
    clock = Clock()
    lim = SlidingWindowLimiter(10, clock=clock)
    sent = []
    while clock.t < 103.0:
        if lim.delay() == 0:
            lim.record()
            sent.append(clock.t)
        else:
            clock.t += 0.001
    for i, t in enumerate(sent):
        in_window = [s for s in sent[i:] if s < t + 1.0]
        assert len(in_window) <= 10
    assert len(sent) >= 30  # and it does send at the cap


def test_delay_is_until_the_oldest_send_leaves_the_window():
    clock = Clock()
    lim = SlidingWindowLimiter(2, clock=clock)
    lim.record()
    clock.t += 0.3
    lim.record()
    assert abs(lim.delay() - 0.7) < 1e-9


def test_zero_means_no_cap():
    lim = SlidingWindowLimiter(0)
    for _ in range(1000):
        lim.record()
    assert lim.delay() == 0
