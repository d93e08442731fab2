"""No log line, ours or a library's, holds a secret, a full number or a message text (issue 19 §6).

Two runs with every line captured through the production logging set-up:
* the fuzzer (bench/fuzz.py) against the real daemon and shim processes, every door, with
  genuine posts served all along: it scans the processes' logs itself;
* the end-to-end and malformed-request tests in a pytest run of their own
  (``SMPPD_LEAK_CAPTURE``, tests/conftest.py), whose witness lists every key, portal
  secret, number and text they used.
"""

from __future__ import annotations

import pytest

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from smppd import phone

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

ROOT = Path(__file__).resolve().parents[2]


def test_fuzzing_every_door_leaves_no_secret_number_or_text_and_no_5xx(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "fuzz.py"), "--cases", "300", "--genuine", "30",
                          "--concurrency", "16", "--json", "--keep", str(tmp_path / "fuzz")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["logs"]["leaks"] == 0, out["logs"]["examples"]
    assert out["logs"]["lines"] > 100  # the processes did log: the scan looked at something
    assert out["crashes"] == 0
    for door, figures in out["doors"].items():
        assert figures["cases"] == 300, door
        assert figures.get("5xx_not_503", 0) == 0 and figures.get("internal", 0) == 0, (door, figures)
    genuine = out["genuine"]
    assert genuine["answers"] == {"200": genuine["posted"]} and genuine["final"] == genuine["posted"], genuine
    assert run.returncode == 0, run.stderr[-2000:]


def _digits(number: str) -> set[str]:
    out = {re.sub(r"\D", "", number)}
    try:
        out.add(phone.normalize(number).lstrip("+"))
    except Exception:  # noqa: BLE001 -- an invalid number on purpose: its digits as posted are enough
        pass
    return {d for d in out if len(d) >= 9}


def test_end_to_end_tests_leave_no_secret_number_or_text_in_any_log_line(tmp_path):
    tests = ["tests/system/test_e2e.py", "tests/system/test_http_e2e.py", "tests/shim/test_shim_malformed.py"]
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env={**os.environ, "SMPPD_LEAK_CAPTURE": str(tmp_path)})
    assert run.returncode == 0, run.stdout[-3000:]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    witness = json.loads((tmp_path / "witness.json").read_text())
    assert len(lines) > 200 and witness["numbers"] and witness["texts"] and witness["secrets"]
    numbers = set().union(*(_digits(n) for n in witness["numbers"]))
    texts = [t for t in witness["texts"] if len(t.strip()) >= 8]
    fragments = {t[:12] for t in texts} | {t[-12:] for t in texts}
    digit_runs = re.compile(r"\d{9,15}")
    leaks = []
    for line in lines:
        json.loads(line)  # every line is one JSON object
        found = [s for s in witness["secrets"] if s and s in line]
        found += [m for m in digit_runs.findall(line) if m in numbers]
        found += [f for f in fragments if f in line]
        if found:
            leaks.append((found, line[:300]))
    assert not leaks, leaks[:5]
