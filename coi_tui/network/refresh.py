"""`python -m coi_tui.network.refresh NAME WORKSPACE FIRST_DELAY [REMOTE]`: keep an allowlist
session's addresses fresh until its container stops (spawned by the session's network hook;
REMOTE names the remote the container runs on)."""

from __future__ import annotations

import sys

from coi_tui.network.isolation import run_refresher


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)  # the refresher's log file


if __name__ == "__main__":
    remote = sys.argv[4] if len(sys.argv) > 4 else None
    run_refresher(sys.argv[1], sys.argv[2], float(sys.argv[3]), say, remote)
