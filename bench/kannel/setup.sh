#!/bin/sh
# Install Kannel (Debian package `kannel`) for bench/kannel/run.py, and keep the
# packaged service from running: the benchmark starts its own bearerbox and smsbox
# with the configuration it writes (kannel.conf.in), on loopback ports of its own.
set -eu
if ! command -v bearerbox >/dev/null 2>&1; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "run as root (apt-get install kannel), or install the kannel package first" >&2
        exit 1
    fi
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends kannel
fi
# The package's own bearerbox (if its init script started one) would hold ports 13000/13001.
if command -v service >/dev/null 2>&1; then service kannel stop >/dev/null 2>&1 || true; fi
bearerbox --version 2>&1 | head -1
