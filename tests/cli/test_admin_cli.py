"""The admin commands as an admin runs them: a separate process, the exit codes scripts rely on."""

from __future__ import annotations

import asyncio
import json
import sys

import pytest

from smppd.cli.demo import start_rig, stop_rig

from tests.rigs.config_rig import config_toml

pytestmark = pytest.mark.integration  # starts servers, processes or sockets (see tests/conftest.py)


@pytest.fixture
async def rig(tmp_path):
    r = await start_rig(tmp_path, seed=4, portal_rate=None)
    yield r
    await stop_rig(r)


@pytest.fixture
def conf(rig, tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(config_toml(tmp_path, rig.portal, rig.smscs["life"], throughput=0))
    return str(path)


async def smppd(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smppd.cli", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode, out.decode(), err.decode()


async def test_status_table_json_and_exit_code(rig, conf):
    rc, out, _ = await smppd("status", "-c", conf)
    assert rc == 0, out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert lines["life"][1] == "up" and lines["mts"][1] == "up"
    rc, out, _ = await smppd("status", "--json", "-c", conf)
    assert rc == 0 and json.loads(out)["routes"]["life"]["window_size"] == 20
    await rig.smscs["mts"].stop()
    while rig.daemon.routes["mts"].connection.bound:
        await asyncio.sleep(0.01)
    rc, out, _ = await smppd("status", "-c", conf)
    assert rc == 1 and "DOWN" in out


async def test_send_waits_for_the_receipt_and_exits_by_it(rig, conf):
    rc, out, err = await smppd("send", "-c", conf, "--code", "by_life", "--to", "+375 29 123-45-67",
                               "--wait", "20s", "smppd test message")
    assert "stored as queued on route life" in out, (out, err)
    final = out.strip().splitlines()[-1]
    assert final.split()[0] in ("delivered", "undelivered", "expired", "rejected"), out
    assert rc == (0 if final.startswith("delivered") else 1)
    assert "SMSC ids 0:" in final and "1234567" not in out
    [submit] = rig.smscs["life"].submitted
    assert submit.destination_addr == "375291234567"


async def test_send_to_an_invalid_number_fails_at_once(rig, conf):
    rc, out, _ = await smppd("send", "-c", conf, "--code", "by_life", "--to", "12", "hello")
    assert rc == 1 and "failed" in out and "invalid number" in out


async def test_usage_errors_and_unreachable_daemon(rig, conf, tmp_path):
    rc, _, err = await smppd("send", "-c", conf, "--code", "nope", "--to", "+375291234567", "x")
    assert rc == 2 and "no sender with code" in err
    rc, _, err = await smppd("cancel", "-c", conf)
    assert rc == 2 and "message ids" in err
    rc, _, err = await smppd("report", "-c", conf, "--since", "a week")
    assert rc == 2 and "not a duration" in err
    other = tmp_path / "other.toml"
    other.write_text(open(conf).read().replace("smppd.sock", "nobody.sock"))
    rc, _, err = await smppd("status", "-c", str(other))
    assert rc == 3 and "unreachable" in err
    bad = tmp_path / "bad.toml"
    bad.write_text(open(conf).read().replace('port = ', 'port = "x" #'))
    rc, _, err = await smppd("check-config", "-c", str(bad))
    assert rc == 2 and "route.life.port" in err


async def test_stuck_cancel_and_report(rig, conf):
    await rig.smscs["mts"].stop()
    from tests.rigs.e2e_rig import post

    _, status, reply = await post(rig, "by_mts", "+375297654321", "will be stuck")
    assert status == 200
    rc, out, _ = await smppd("stuck", "-c", conf, "--for", "0", "--json")
    assert rc == 0 and [m["id"] for m in json.loads(out)] == [reply["id"]]
    rc, out, _ = await smppd("retry", "-c", conf, str(reply["id"]))
    assert rc == 1 and "queued again: 0 of 1" in out  # already queued: nothing to do
    rc, out, _ = await smppd("cancel", "-c", conf, "--stuck-for", "0", "--route", "mts")
    assert rc == 0 and f"cancelled: 1 ({reply['id']})" in out
    rc, out, _ = await smppd("report", "-c", conf, "--json", "--utc")
    rows = {r["route"]: r for r in json.loads(out)}
    assert rc == 0 and rows["mts"]["failed"] == 1 and rows["mts"]["sent"] == 1


async def test_admin_commands_need_no_secrets_but_check_config_does(rig, conf, tmp_path):
    text = open(conf).read().replace('password = "secret"', 'password = "${SMPPD_TEST_LIFE_PW}"')
    secret_conf = tmp_path / "secret.toml"
    secret_conf.write_text(text)
    rc, out, err = await smppd("status", "-c", str(secret_conf))
    assert rc == 0, err
    rc, _, err = await smppd("check-config", "-c", str(secret_conf))
    assert rc == 2 and "route.life.password: environment variable SMPPD_TEST_LIFE_PW is not set" in err
    env = tmp_path / "secrets.env"
    env.write_text("# secrets\nSMPPD_TEST_LIFE_PW='s3cr3t'\n")
    rc, out, err = await smppd("check-config", "-c", str(secret_conf), "--env-file", str(env))
    assert rc == 0 and "ok" in out, err
