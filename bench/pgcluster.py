"""A throwaway PostgreSQL cluster (bench/failover.py, the cluster tests): initdb + pg_ctl, Unix socket only.

Skips (never fails) where Debian's postgresql package is not installed. The server
listens on no TCP port (``listen_addresses=''``), only on a socket in its temp dir, so
parallel runs never collide; ``stop()`` is ``pg_ctl stop -m immediate``.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass


def pg_bin() -> str | None:
    """The newest installed server's bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    return os.path.dirname(found[-1]) if found else None


@dataclass
class PgCluster:
    root: str
    bin: str

    @property
    def socket_dir(self) -> str:
        return os.path.join(self.root, "sock")

    user: str = "postgres"

    @property
    def conninfo(self) -> str:
        return f"postgresql:///postgres?host={self.socket_dir}&user={self.user}"

    def _ctl(self, *args: str) -> None:
        _run([os.path.join(self.bin, "pg_ctl"), "-D", os.path.join(self.root, "data"), *args])

    def start(self) -> None:
        opts = f"-c listen_addresses='' -c unix_socket_directories={self.socket_dir} -c fsync=off -c max_connections=60"
        self._ctl("-w", "-t", "30", "-l", os.path.join(self.root, "log"), "-o", opts, "start")

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()


def _as_server_user() -> dict[str, object]:
    """initdb and the server refuse to run as root: run them as the postgres account then."""
    if os.geteuid() != 0:
        return {}
    import pwd

    pw = pwd.getpwnam("postgres")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/",
                   **_as_server_user())  # type: ignore[arg-type]


def start_cluster() -> PgCluster | None:
    binary = pg_bin()
    if binary is None:
        return None
    root = tempfile.mkdtemp(prefix="smppd-pg-")
    os.makedirs(os.path.join(root, "sock"))
    if os.geteuid() == 0:
        import pwd

        pw = pwd.getpwnam("postgres")
        for d in (root, os.path.join(root, "sock")):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    _run([os.path.join(binary, "initdb"), "-D", os.path.join(root, "data"), "-A", "trust", "-U", "postgres",
          "--no-sync", "-E", "UTF8"])
    cluster = PgCluster(root, binary)
    cluster.start()
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
