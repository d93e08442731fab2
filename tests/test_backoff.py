"""The one back-off (smppd/backoff.py): doubling, capped, jitter of a fifth, pure."""

from __future__ import annotations

import random

import pytest

from smppd.backoff import backoff


class _Fixed:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self) -> float:
        return self.value


@pytest.mark.parametrize("attempt,expected", [(0, 2.0), (1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (7, 100.0), (10**6, 100.0)])
def test_doubles_from_first_and_stops_at_cap(attempt: int, expected: float) -> None:
    assert backoff(attempt, 2.0, 100.0, _Fixed(1.0)) == pytest.approx(expected)


def test_jitter_spans_the_top_fifth_and_never_exceeds_the_cap() -> None:
    assert backoff(3, 1.0, 60.0, _Fixed(0.0)) == pytest.approx(3.2)
    assert backoff(3, 1.0, 60.0, _Fixed(0.5)) == pytest.approx(3.6)
    rng = random.Random(5)
    delays = [backoff(n, 1.0, 60.0, rng) for n in range(1, 40) for _ in range(50)]
    assert all(d <= 60.0 for d in delays)
    capped = [backoff(20, 1.0, 60.0, rng) for _ in range(2000)]
    assert min(capped) >= 48.0 and max(capped) <= 60.0
    assert max(capped) - min(capped) > 10.0, "the jitter spreads retries of several routes apart"


def test_pure_given_the_random_source() -> None:
    a = [backoff(n, 0.5, 30.0, random.Random(9)) for n in range(1, 12)]
    b = [backoff(n, 0.5, 30.0, random.Random(9)) for n in range(1, 12)]
    assert a == b


def test_huge_attempt_counts_do_not_overflow() -> None:
    # a bind refused once a minute for a year: 2 ** 525600 is no float
    assert backoff(525_600, 5.0, 60.0, _Fixed(1.0)) == pytest.approx(60.0)


def test_every_retry_uses_it() -> None:
    """No retry loop grows its own formula again: the jitter lives in one module."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parent.parent / "smppd"
    own = re.compile(r"\*\s*2\s*\*\*|uniform\(")
    offenders = [
        f"{path.relative_to(root)}:{n}"
        for path in root.rglob("*.py")
        if path.name != "backoff.py" and "sims" not in path.parts and path.name not in {"simulator.py", "portal.py"}
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if own.search(line)
    ]
    assert offenders == []
