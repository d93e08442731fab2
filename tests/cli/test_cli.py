"""The smppd command: exit codes and one-line config errors, as scripts see them."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "config.toml"


def smppd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "smppd.cli", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.integration
def test_check_config_ok():
    r = smppd("check-config", "-c", str(EXAMPLE))
    assert r.returncode == 0 and "ok" in r.stdout


@pytest.mark.integration
def test_bad_config_is_one_line_naming_the_key(tmp_path):
    bad = tmp_path / "config.toml"
    bad.write_text(EXAMPLE.read_text().replace("port = 2775", "port = 99999", 1))
    # Admin commands (status, send, ...) read only [daemon], so they work without the secrets.
    for command in ("check-config", "run"):
        r = smppd(command, "-c", str(bad))
        assert r.returncode == 2
        lines = r.stderr.strip().splitlines()
        assert lines == ["smppd: config error: route.life.port: must be an integer from 1 to 65535, got 99999"]


@pytest.mark.integration
def test_status_when_the_daemon_is_not_running(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(EXAMPLE.read_text().replace("/run/smppd/smppd.sock", str(tmp_path / "none.sock")))
    r = smppd("status", "-c", str(cfg))
    assert r.returncode == 3 and "unreachable" in r.stderr


@pytest.mark.integration
def test_no_command_prints_help():
    r = smppd()
    assert r.returncode == 2 and "demo" in r.stdout


@pytest.mark.integration
def test_a_reader_that_closes_the_pipe_gets_no_traceback():
    """`smppd stuck | head`: the reader is gone before we print; every command goes through main()."""
    p = subprocess.Popen([sys.executable, "-m", "smppd.cli", "text", "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # closed before the command can print: its first write meets EPIPE
    _, err = p.communicate(b"a text read from stdin, so nothing is printed before the pipe is shut", timeout=30)
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    assert p.returncode == 141


def test_console_log_lines_into_a_closed_pipe_are_quiet():
    """`smppd demo | head`: the demo logs to the console; a line after the reader left must not
    raise inside whatever logged it (an SMPP callback printed a traceback per line)."""
    import os

    from smppd.ops.logs import PipeSafe

    r, w = os.pipe()
    os.close(r)
    out = os.fdopen(w, "w")
    safe = PipeSafe(out)
    safe.write("a log line\n")
    safe.flush()  # EPIPE here: the descriptor now points at /dev/null
    safe.write("another\n" * 10000)
    safe.flush()
    out.close()


@pytest.mark.integration
def test_check_config_says_where_each_http_route_is_called_back(tmp_path):
    """The handler key opens no /dlr/ door (issue 18): check-config tells the admin the
    URL to give each provider, or that a route without a callback_key is polled only."""
    conf = tmp_path / "config.toml"
    key = "cb-" + "k" * 30
    conf.write_text(EXAMPLE.read_text() + f"""  # public_url is not set there
[route.smsru]
kind = "smsru"
api_id = "api-id-0123"
callback_key = "{key}"

[route.smsc]
kind = "smsc"
login = "me"
password = "pw"
""")
    r = smppd("check-config", "-c", str(conf))
    assert r.returncode == 0, r.stderr
    assert "route smsru: callback URL https://YOUR-HOST/dlr/smsru?key=<route.smsru.callback_key>" in r.stdout
    assert key not in r.stdout  # the key only when asked for
    assert "route smsc: no callback_key, so /dlr/smsc is closed" in r.stdout
    r = smppd("check-config", "-c", str(conf), "--callback-urls")
    assert f"route smsru: callback URL https://YOUR-HOST/dlr/smsru?key={key}" in r.stdout
