"""`python -m coi_tui.network.refresh NAME WORKSPACE FIRST_DELAY`: keep an allowlist session's
addresses fresh until its container stops (spawned by the network hook)."""

from __future__ import annotations

import sys

from coi_tui.network.hook import run_refresher

if __name__ == "__main__":
    run_refresher(sys.argv[1], sys.argv[2], float(sys.argv[3]))
