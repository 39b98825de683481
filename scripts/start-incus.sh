#!/usr/bin/env bash
# Start the Incus daemon when nothing answers on its socket. Idempotent.
# Machines with systemd socket-activate incusd; ours have no systemd, so we start it ourselves.
set -euo pipefail

if incus info >/dev/null 2>&1; then
    echo "incus: daemon already answering"
    exit 0
fi

. "$(dirname "$0")/lib.sh"
require_root "incus: starting the daemon"

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl start incus.socket incus.service
else
    INCUSD=/usr/libexec/incus/incusd
    [ -x "$INCUSD" ] || { echo "incus: $INCUSD not found; run scripts/install-os-deps.sh" >&2; exit 1; }
    $SUDO mkdir -p /var/log/incus
    echo "incus: starting $INCUSD in the background (log: /var/log/incus/incusd.log)"
    # setsid + nohup: the daemon must outlive make and this shell.
    $SUDO setsid nohup "$INCUSD" --group incus-admin --logfile /var/log/incus/incusd.log \
        </dev/null >/dev/null 2>&1 &
fi
$SUDO incus admin waitready --timeout 60
echo "incus: daemon ready ($(incus version 2>/dev/null | tail -1))"
