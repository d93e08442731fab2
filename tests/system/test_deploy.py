"""The deployment files: systemd units, Prometheus rules, Grafana dashboard, nginx site.

The external checkers (systemd-analyze, promtool) are skipped when missing
on a developer's machine; CI installs them and sets SMPPD_REQUIRE_TOOLS=1 so
a missing tool fails instead of skipping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from smppd import config
from smppd.cli.demo import start_rig, stop_rig

ROOT = Path(__file__).parents[2]
UNITS = ROOT / "systemd"
PROM = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "smppd-dashboard.json"
NGINX = ROOT / "deploy" / "nginx" / "smppd.conf"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("SMPPD_REQUIRE_TOOLS"):
            pytest.fail(f"{name} is required in CI and is not installed")
        pytest.skip(f"{name} not installed (Debian: apt-get install {'prometheus' if name == 'promtool' else 'systemd'})")
    return path


def unit(name: str) -> dict[str, list[str]]:
    """key -> values of a unit file (systemd allows a key several times)."""
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            k, v = line.split("=", 1)
            out.setdefault(k.strip(), []).append(v.strip())
    return out


def installed_copies(tmp_path: Path) -> list[Path]:
    """The units with ExecStart pointing at this checkout's console scripts, as an install would."""
    bindir = Path(sys.executable).parent
    copies = []
    for u in ("smppd.service", "smppd-shim.service", "smppd.socket", "smppd-shim.socket"):
        text = (UNITS / u).read_text().replace("/opt/smppd/bin/", f"{bindir}/")
        (tmp_path / u).write_text(text)
        copies.append(tmp_path / u)
    return copies


@pytest.mark.integration
def test_units_pass_systemd_analyze_verify(tmp_path):
    exe = tool("systemd-analyze")
    r = subprocess.run([exe, "verify", *map(str, installed_copies(tmp_path))], capture_output=True, text=True)
    # verify exits 0 on unknown keys but says so on stderr: any word from it is a finding.
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


@pytest.mark.integration
@pytest.mark.parametrize("name", ["smppd.service", "smppd-shim.service"])
def test_units_exposure_is_low(tmp_path, name):
    exe = tool("systemd-analyze")
    installed_copies(tmp_path)
    r = subprocess.run([exe, "security", "--offline=yes", str(tmp_path / name)], capture_output=True, text=True)
    m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", r.stdout + r.stderr)
    assert m, r.stdout + r.stderr
    assert float(m[1]) <= 2.0, r.stdout


def test_units_agree_with_the_example_config():
    cfg = config.load(ROOT / "config.toml")
    daemon, shim = unit("smppd.service"), unit("smppd-shim.service")
    assert daemon["Type"] == ["notify"] and shim["Type"] == ["notify"]
    assert daemon["StateDirectory"] == ["smppd"] and cfg.daemon.database.startswith("/var/lib/smppd/")
    assert daemon["RuntimeDirectory"] == ["smppd"] and cfg.daemon.socket_path.startswith("/run/smppd/")
    # The shim reaches the socket through the group the daemon runs as.
    assert daemon["Group"] == shim["Group"] == ["smppd"] and daemon["User"] != shim["User"]
    for u in (daemon, shim):
        assert u["ExecStart"][0].endswith(" -c /etc/smppd/config.toml")
        assert u["EnvironmentFile"] == ["/etc/smppd/secrets.env"]
        assert u["NoNewPrivileges"] == ["yes"] and u["ProtectSystem"] == ["strict"]
        assert u["ProtectHome"] == ["yes"] and u["PrivateTmp"] == ["yes"]
        assert "@system-service" in u["SystemCallFilter"] and u["MemoryMax"]
        assert u["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert not any(re.search(r"password|secret|token|key=", v, re.I) for vs in u.values() for v in vs
                       if not v.startswith("/etc/smppd/secrets.env"))
    assert daemon["WatchdogSec"] and daemon["Restart"] == ["on-failure"]
    assert "After" in shim and "smppd.service" in shim["After"][0]
    # The daemon's peer check reads /proc/PID/status of its callers.
    assert "ProtectProc" not in daemon


@pytest.mark.integration
def test_alert_rules_pass_promtool(tmp_path):
    exe = tool("promtool")
    r = subprocess.run([exe, "check", "rules", str(PROM / "smppd-alerts.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([exe, "test", "rules", "smppd-alerts.test.yml"], cwd=PROM, capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


@pytest.mark.integration
def test_scrape_config_and_rules_load_in_prometheus(tmp_path):
    """The README's Prometheus step, as promtool sees it: our scrape jobs plus our rule file."""
    exe = tool("promtool")
    scrape = (PROM / "scrape.yml").read_text()
    shutil.copy(PROM / "smppd-alerts.yml", tmp_path / "smppd-alerts.yml")
    (tmp_path / "prometheus.yml").write_text('rule_files: ["smppd-alerts.yml"]\n' + scrape)
    r = subprocess.run([exe, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = set(re.findall(r"job_name: (\S+)", scrape))
    assert jobs == {"smppd", "smppd-shim"} and 'job=~"smppd|smppd-shim"' in (PROM / "smppd-alerts.yml").read_text()
    cfg = config.load(ROOT / "config.toml")
    assert f"{cfg.daemon.metrics[0]}:{cfg.daemon.metrics[1]}" in scrape
    assert f"{cfg.shim.metrics[0]}:{cfg.shim.metrics[1]}" in scrape


def referenced_metrics() -> dict[str, set[str]]:
    """Metric names used by the alert rules and the dashboard (recorded series excluded)."""
    rules = (PROM / "smppd-alerts.yml").read_text()
    dash = json.loads(DASHBOARD.read_text())
    sources = {"alerts": rules, "dashboard": " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])}
    recorded = set(re.findall(r"record: (\S+)", rules))
    return {
        where: {n for n in re.findall(r"\b(smppd_[a-z0-9_]+)", text) if not any(n in r for r in recorded)}
        for where, text in sources.items()
    }


@pytest.mark.integration
async def test_every_metric_the_rules_and_dashboard_use_is_exported(tmp_path):
    rig = await start_rig(tmp_path, portal_rate=None)
    try:
        from tests.rigs.e2e_rig import post, wait_final

        b24_id, status, _ = await post(rig, "by_life", "+375291234567", "hello")
        await wait_final(rig, [b24_id])
        await rig.daemon.ops.watcher.tail()
        await rig.daemon.ops.watcher.snapshot()
        from smppd.ops import metrics

        metrics.THROTTLE_EVENTS.labels("life", "throughput")  # a labelled family shows once it has a child
        metrics.RECONNECTS.labels("life")
        metrics.REST_ERRORS.labels("x", "y")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{rig.daemon.ops.metrics_port}/metrics") as resp:
                text = await resp.text()
    finally:
        await stop_rig(rig)
    exported = set(re.findall(r"^(smppd_[a-z0-9_]+)", text, re.M))
    # A node of several (PostgreSQL) exports the lease families too; this rig is one node
    # (SQLite), so they come from the collector's cluster part, with a node that holds one.
    exported |= _cluster_only_metrics()
    for where, names in referenced_metrics().items():
        assert names, where
        assert names <= exported, (where, names - exported)


def _cluster_only_metrics() -> set[str]:
    from smppd.ops.metrics import cluster_families

    class OneLease:
        node = "a"
        connection_losses = 0

        def leases(self) -> dict[str, bool]:
            return {"route:life": True}

        def lease_changes(self) -> dict[tuple[str, str], int]:
            return {("route:life", "gained"): 1}

    return {s.name for f in cluster_families("a", OneLease()) for s in f.samples}


def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"] == "smppd"
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"] for t in p["targets"])


def test_nginx_site_proxies_to_the_shim_and_keeps_the_key_out_of_logs():
    text = NGINX.read_text()
    cfg = config.load(ROOT / "config.toml")
    assert f"server {cfg.shim.host}:{cfg.shim.port};" in text
    log_format = re.search(r"log_format smppd_nokey (.*?);", text, re.S)[1]
    assert "$request_uri" not in log_format and "$request " not in log_format and "$args" not in log_format
    assert "access_log /var/log/nginx/smppd.access.log smppd_nokey;" in text
    assert "ssl_certificate " in text and "/metrics" not in re.sub(r"#.*", "", text)


def test_socket_units_hold_what_the_config_names():
    """smppd.socket and smppd-shim.socket outlive their services (issue 13): a restart or
    an upgrade leaves connections in the backlog; the programs take them by name."""
    cfg = config.load(ROOT / "config.toml")
    sock, shim_sock = unit("smppd.socket"), unit("smppd-shim.socket")
    daemon, shim = unit("smppd.service"), unit("smppd-shim.service")
    assert sock["ListenStream"] == [cfg.daemon.socket_path]
    assert shim_sock["ListenStream"] == [f"{cfg.shim.host}:{cfg.shim.port}"]
    assert sock["FileDescriptorName"] == ["smppd"] and shim_sock["FileDescriptorName"] == ["smppd-shim"]
    assert sock["SocketGroup"] == daemon["Group"] and sock["SocketMode"] == ["0660"]
    assert sock["Service"] == ["smppd.service"] and shim_sock["Service"] == ["smppd-shim.service"]
    assert "smppd.socket" in daemon["Requires"][0] and "smppd-shim.socket" in shim["Requires"][0]
    # the socket's file lives in /run/smppd: a daemon restart must not remove it
    assert daemon["RuntimeDirectoryPreserve"] == ["yes"]
    # the shim's spool ($STATE_DIRECTORY/spool)
    assert shim["StateDirectory"] == ["smppd-shim"] and not cfg.shim.spool_dir
    assert config.spool_dir(cfg, {"STATE_DIRECTORY": "/var/lib/smppd-shim"}) == "/var/lib/smppd-shim/spool"
