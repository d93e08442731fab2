"""JSON through orjson where orjson's answer is the standard library's answer;
``None`` hands the text back to the exact decoder (``json``).

Two users, both per message: the RPC wire (``smppd.rpc.wire``, ``rpc.client``) and the
answers of HTTP servers (``smppd.http_client.Answer.json``: Bitrix24's batch answers
to the status pusher, the HTTP providers' answers).

Why: the RPC's JSON was ~4 µs per message over the daemon and the shim
(an ``intake.batch`` line decoded 2.1 µs per post against 0.8, its answer
encoded 1.5 against 0.1 and decoded 1.6 against 0.25; BENCHMARKS.md,
"Issue 15: the bar"); a Bitrix24 batch answer of 50 statuses is read ~4x
faster (BENCHMARKS.md, "Issue 15: the bar held").

Where orjson and ``json`` part ways, and how each is handed back:

- integers: orjson reads ``[2**63, 2**64)`` as ints and anything wider as a
  float, silently; the wire refuses everything outside a signed 64-bit
  range.  Any run of 19 or more digits in the line (the shortest integer
  that can be out of range has 19) sends the line to the exact decoder,
  unless the run follows a ``.``: a float's fraction (PHP writes durations
  such as ``0.0012340545654296875`` in every Bitrix24 batch answer), where
  both read the same double (tested on 300,000 random floats); a run of 38
  or more after a ``.`` still goes, to keep the check two substring counts.
  A digit run inside a string may send a line too, which costs time, never
  a verdict.
- everything orjson refuses (NaN, Infinity, ``1e400``, a lone surrogate
  escape, nesting past 1024, bad UTF-8, bad JSON) goes to the exact
  decoder as well, so every refusal keeps its old message and every line
  ``json`` took it still takes.

Encoding: orjson writes what ``json`` with ``ensure_ascii=False`` and no
spaces writes for the types the daemon answers with (str, int, bool, None,
lists, str-keyed dicts; tested), except that floats may be spelled
differently with the same value.  A value orjson refuses (an int past 64
bits, a non-str key, a lone surrogate) is ``None`` here and written by
``json``.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "loads", "long_number"]

# Every digit read as "0", then one substring search: ~0.1 µs per post where
# re's [0-9]{19} took ~2.
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19
_LONG_FRACTION = b"." + _LONG_NUMBER


def long_number(line: bytes) -> bool:
    """Whether ``line`` holds 19 or more digits in a row that are not a float's fraction.

    Counted, not searched: a run of 19 to 37 digits is one (leftmost, non-overlapping)
    match of 19 zeros, found again after a ``.`` only when it is a fraction."""
    zeros = line.translate(_DIGITS_AS_ZERO)
    runs = zeros.count(_LONG_NUMBER)
    return runs != 0 and runs != zeros.count(_LONG_FRACTION)


def loads(line: bytes) -> Any | None:
    """``line`` decoded, or ``None`` when only the exact decoder may answer.

    ``None`` is also what a line holding JSON ``null`` would give, which the
    exact decoder then reads again: harmless, a request or a reply is never null.
    """
    if long_number(line):
        return None
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return None


def dumps(obj: Any) -> bytes | None:
    """``obj`` as compact UTF-8 JSON, or ``None`` when orjson refuses it."""
    try:
        return orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return None
