"""``smppd demo`` shows its progress and its table, not log lines, unless ``--verbose`` (issue 14 §13)."""

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)

LOG_LINE = re.compile(r"\[(debug|info|warning|error|critical)\s*\]")


def demo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smppd.cli", "demo", "-n", "80", "--seed", "3", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_demo_screen_is_its_progress_and_table_only():
    quiet = demo()
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    screen = quiet.stdout + quiet.stderr
    assert not LOG_LINE.search(screen), screen
    assert "template_over_one_segment" not in screen and "lost                 0" in screen
    assert len(screen.splitlines()) < 40


def test_verbose_shows_the_log_lines():
    loud = demo("--verbose")
    assert loud.returncode == 0
    assert LOG_LINE.search(loud.stdout) and "message_received" in loud.stdout
