"""``smppd.json_fast``: orjson reads and writes the RPC's usual lines (it must not
silently hand them to the slow ``json`` path), and every line where orjson and ``json``
part ways goes to the exact decoder, so the wire's refusals and answers stay the same."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from shim import bitrix_form as bf
from shim.app import _intake_json
from smppd import json_fast
from smppd.rpc import wire

from tests.rigs.form_rig import random_form

_EXACT = json.JSONDecoder(parse_int=wire._bounded_int, parse_constant=wire._no_constant)


def _posts(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    params = []
    for _ in range(n):
        try:
            params.append(_intake_json(bf.parse_handler_post(random_form(rng))))
        except bf.FormError:
            continue
    return params


def test_an_intake_batch_line_and_its_answer_take_the_fast_path() -> None:
    posts = _posts(1, 400)
    # Hex b24_ids may hold 19 digits in a row now and then; those go the exact way.
    usual = [p for p in posts if not json_fast.long_number(p)]
    assert len(usual) > 100
    [(line, ids)] = wire.request_lines("intake", list(enumerate(usual[:200], 1)))
    assert json_fast.loads(line) is not None, "a usual intake.batch line fell back to json"
    assert json_fast.loads(line) == json.loads(line)
    assert wire.parse_request(line.rstrip(b"\n"))[1] == "intake.batch"
    answer = {"id": ids[0], "result": [{"result": {"id": 10**12 + i, "status": "queued", "duplicate": i % 2 == 0}}
                                        for i in range(len(ids))]}
    encoded = json_fast.dumps(answer)
    assert encoded is not None, "a usual answer fell back to json"
    assert encoded == wire.encode_json(answer).encode()
    assert wire.encode_line(answer) == encoded + b"\n"


@pytest.mark.parametrize("seed", range(2))
def test_random_posts_decode_as_json_decodes_them(seed: int) -> None:
    for params in _posts(seed, 1500):
        line = b'{"id":7,"method":"intake","params":%b}' % params
        assert wire.decode_line(line) == _EXACT.decode(line.decode()), line


_VALUES: list[Any] = [None, True, False, 0, -1, 2**63 - 1, -(2**63), 1.5, -0.25, "", "x", "Привет 😀",
                      'q"\\\n\t\x00\x1f\x7f\u2028', [], {}, [1, "a", None], {"k": [{"n": {}}]}]


@pytest.mark.parametrize("value", _VALUES)
def test_values_the_daemon_answers_with_are_written_as_json_writes_them(value: Any) -> None:
    obj = {"id": 3, "result": value}
    assert json_fast.dumps(obj) == wire.encode_json(obj).encode()


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, {1: "non-str key"}])
def test_values_orjson_refuses_are_written_by_json(value: Any) -> None:
    obj = {"id": 3, "result": value}
    assert json_fast.dumps(obj) is None
    assert wire.encode_line(obj) == wire.encode_json(obj).encode() + b"\n"


def test_a_lone_surrogate_is_refused_by_both_as_before() -> None:
    assert json_fast.dumps({"result": "\ud800"}) is None
    with pytest.raises(UnicodeEncodeError):
        wire.encode_line({"result": "\ud800"})


@pytest.mark.parametrize(
    "line",
    [
        b'{"id":1,"method":"m","params":{"n":9223372036854775808}}',  # 2**63: orjson takes it
        b'{"id":1,"method":"m","params":{"n":-9223372036854775809}}',
        b'{"id":1,"method":"m","params":{"n":18446744073709551616}}',  # orjson: a float
        b'{"id":1,"method":"m","params":{"n":NaN}}',
        b'{"id":1,"method":"m","params":{"n":1e400}}',
        b'{"id":1,"method":"m","params":{"s":"\\ud800"}}',
        b'{"id":1,"method":"m","params":{"n":' + b"[" * 1100 + b"]" * 1100 + b"}}",
        b'{"id":1,"method":"m","params":{"s":"12345678901234567890"}}',
        b'{"id":1,"method":"m"',
        b"\xff",
    ],
)
def test_lines_orjson_reads_otherwise_get_the_exact_decoders_verdict(line: bytes) -> None:
    assert json_fast.loads(line) is None

    def verdict(decode: Any) -> Any:
        try:
            return ("ok", decode(line))
        except wire.BadRequest as exc:
            return ("refused", exc.request_id, exc.message)

    def exact(raw: bytes) -> Any:
        try:
            request = _EXACT.decode(raw.decode("utf-8"))
        except wire._OutOfRange:
            raise wire.BadRequest(None, "numbers must be integers of at most 64 bits or finite decimals") from None
        except RecursionError:
            raise wire.BadRequest(None, "nested too deeply") from None
        except ValueError:
            raise wire.BadRequest(None, "line is not valid UTF-8 JSON") from None
        return request["id"], request["method"], request.get("params", {})

    assert verdict(wire.parse_request) == verdict(exact)


def test_long_numbers_are_found_wherever_they_are() -> None:
    for n in range(30):
        assert json_fast.long_number(b"x" * n + b"1234567890123456789") is True
        assert json_fast.long_number(b"1234567890123456789" + b"," * n) is True
    assert json_fast.long_number(b"123456789012345678,123456789012345678") is False
    assert json_fast.long_number(b"-9223372036854775808") is True
    assert json_fast.long_number(bytes(range(256)) * 3) is False


def test_a_floats_long_fraction_is_not_a_long_number_but_its_long_integer_part_is() -> None:
    assert json_fast.long_number(b'{"duration":0.0012340545654296875}') is False  # PHP's shortest repr
    assert json_fast.long_number(b'[0.0012340545654296875,1.25,3.0000000000000000000001]') is False
    assert json_fast.long_number(b'[0.0012340545654296875,12345678901234567890]') is True
    assert json_fast.long_number(b'12345678901234567890.5') is True  # the integer part counts
    assert json_fast.long_number(b'-12345678901234567890') is True
    assert json_fast.long_number(b"0." + b"1" * 40) is True  # 38+ after a dot: conservative
    for line in (b'[0.0012340545654296875]', b'{"t":0.12345678901234567890123e-5}'):
        assert json_fast.loads(line) == json.loads(line)
    line = b'{"id":1,"method":"m","params":{"x":1.0000000000000000000001}}'  # once sent to json
    assert json_fast.loads(line) is not None
    assert wire.parse_request(line) == (1, "m", {"x": 1.0})


def test_integers_at_the_64_bit_bounds_are_taken() -> None:
    line = b'{"id":1,"method":"m","params":{"a":9223372036854775807,"b":-9223372036854775808}}'
    assert wire.parse_request(line)[2] == {"a": 2**63 - 1, "b": -(2**63)}


def test_http_answers_read_as_json_reads_them_and_usual_ones_by_orjson():
    """``http_client.Answer.json``: a Bitrix24 batch answer goes through orjson; every body
    where orjson and json could part gives json's value or json's error."""
    from smppd.http_client import Answer

    batch = json.dumps({"result": {"result": {f"s{i}": True for i in range(50)}, "result_error": [],
                                   "result_time": {f"s{i}": {"start": 1764688800.1234567, "duration": 0.0012340545654296875}
                                                   for i in range(50)}},
                        "time": {"start": 1733150000.123, "operating": 0.5}}).encode()
    assert json_fast.loads(batch) is not None, "a usual Bitrix24 answer fell back to json"
    assert Answer(200, batch).json() == json.loads(batch)
    for body in (b'{"n": 123456789012345678901234567890}', b'{"x": NaN}', b'[1e400]', b'"\\ud800"',
                 b'{"t": "\xff\xfe"}', b"null", "{\"кириллица\": \"да\"}".encode()):
        text = body.decode("utf-8", "replace")
        try:
            expected = json.loads(text)
        except ValueError:
            with pytest.raises(ValueError):
                Answer(200, body).json()
        else:
            assert Answer(200, body).json() == expected or (expected != expected)  # NaN is not itself
    for body in (b"", b"<html>502 Bad Gateway</html>", b'{"a": 1', b"\xef\xbb\xbf{}"):
        with pytest.raises(ValueError):
            Answer(200, body).json()
