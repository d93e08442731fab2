"""The simulated portal's JSON answers keep PHP's json_encode shapes (bitrix24.md: batch results)."""

from __future__ import annotations

import random
from typing import Any

from smppd.sims.bitrix24.wire import _phpify


def _phpify_plain(value: Any) -> Any:
    """The first, obvious version: kept as the oracle for the container-only walk."""
    if isinstance(value, dict):
        if list(value) == [str(i) for i in range(len(value))]:
            return [_phpify_plain(v) for v in value.values()]
        return {k: _phpify_plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_phpify_plain(v) for v in value]
    return value


def _tree(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(6 if depth < 4 else 3)
    if kind == 0:
        return rng.choice(["", "0", "x", "delivered"])
    if kind == 1:
        return rng.choice([0, 1, 1.5, True, None])
    if kind == 2:
        return rng.choice([{}, []])
    n = rng.randrange(4)
    if kind == 3:  # keys "0".."n-1": a PHP list
        return {str(i): _tree(rng, depth + 1) for i in range(n)}
    if kind == 4:  # almost a list: a gap, a different start, a non-digit key
        keys = rng.choice([["0", "2"], ["1", "2"], ["0", "a"], ["start", "finish"], [0, 1]][: n + 1])
        return {k: _tree(rng, depth + 1) for k in keys}
    return [_tree(rng, depth + 1) for _ in range(n)]


def test_php_shapes() -> None:
    assert _phpify({}) == []
    assert _phpify({"0": "a", "1": {}}) == ["a", []]
    assert _phpify({"1": "a"}) == {"1": "a"}
    assert _phpify({"0": "a", "2": "b"}) == {"0": "a", "2": "b"}
    assert _phpify({0: "a"}) == {0: "a"}  # int keys are not PHP's string list keys
    assert _phpify({"result": {"7": True}, "time": {"start": 1.5}}) == {"result": {"7": True}, "time": {"start": 1.5}}


def test_same_as_the_plain_walk() -> None:
    rng = random.Random(7)
    for _ in range(5000):
        tree = _tree(rng, 0)
        assert _phpify(tree) == _phpify_plain(tree)
