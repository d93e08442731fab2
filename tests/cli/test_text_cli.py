"""``smppd text``: what a text costs before a broadcast goes out."""

from smppd import text
from smppd.cli import main as cli


def run(capsys, *argv):
    code = cli.main(["text", *argv])
    out, err = capsys.readouterr()
    return code, dict(line.split(None, 1) if " " in line else (line, "") for line in out.splitlines()), err


def test_latin_text_is_gsm7_with_extension_chars_counted_twice(capsys):
    code, out, _ = run(capsys, "Order {42}", "-n", "250")
    assert code == 0
    assert out["encoding"].strip() == "GSM-7"
    assert out["length"].strip() == "12 septets"  # '{' and '}' are ESC + code
    assert out["segments"].strip() == "1"
    assert out["left"].split()[-2] == "148"
    assert "forces" not in out
    assert out["broadcast"].strip() == "250 segments for 250 recipients"


def test_one_dash_forces_ucs2_and_is_named(capsys):
    body = "Your order is ready — pick it up today between 9:00 and 21:00 at Main st 1"
    code, out, _ = run(capsys, body, "-n", "1000")
    assert out["encoding"].strip() == "UCS-2"
    assert out["segments"].strip() == "2"  # 75 units > 70
    assert out["forces"].strip() == "UCS-2    '—'"
    assert out["without"].strip() == "them    1 segment(s) as GSM-7"
    assert out["broadcast"].strip() == "2000 segments for 1000 recipients"


def test_multipart_chars_left_match_the_splitter(capsys):
    body = "ж" * 100  # 67 + 33
    code, out, _ = run(capsys, body)
    assert out["segments"].strip() == "2"
    assert out["left"].split()[2] == "34"
    assert text.cost(body).chars_left == 34


def test_unsendable_text_is_refused(capsys):
    code, _, err = run(capsys, "x" * 153 * 256)
    assert code == 1 and "cannot be sent" in err


def test_template_from_stdin_keeps_its_line_breaks(capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("Line one\nLine two\n"))
    code, out, _ = run(capsys, "-")
    assert code == 0 and out["length"].strip() == "17 septets"  # the inner newline counts, the last does not
