"""The exec capture process (monitor/daemon.py capture_main) against the real kernel: a
daemon that does not read for a while (busy judging a container's boot) must not make the
capture lose events. Before, the capture blocked on the full pipe, the kernel's queue of
process events overflowed (ENOBUFS) and whatever ran then was never judged.

A pid namespace made with `unshare -p` stands for a container: with no list of watched
namespaces yet, the capture forwards every container's events."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time

import pytest

from coi_tui.monitor.daemon import start_capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector needs root")

BURST = 4000  # forks, execs and exits: well beyond what a 4 MiB socket queues
MARK = f"coi-capture-{os.getpid()}-" + "x" * 4000  # 4000 lines of it fill the 1 MiB pipe


def test_a_daemon_that_stops_reading_loses_no_exec() -> None:
    read_end, pid, ctl = start_capture()
    try:
        time.sleep(0.2)  # the capture subscribes to the proc connector (no signal for it)
        # nothing is read from the capture meanwhile; the last command, living 0.2 s,
        # comes after every other in the capture's output
        script = (
            f"i=0; while [ $i -lt {BURST} ]; do /bin/echo {MARK} >/dev/null; i=$((i+1)); done; "
            f"/bin/sh -c 'sleep 0.2' {MARK}-end"
        )
        burst = subprocess.run(
            ["unshare", "-p", "-f", "--mount-proc", "sh", "-c", script], timeout=300
        )
        assert burst.returncode == 0
        execs = named = 0
        lost: list[str] = []
        buffer = b""
        ended = False
        deadline = time.monotonic() + 60
        while not ended and time.monotonic() < deadline:
            ready, _, _ = select.select([read_end], [], [], 1.0)
            if not ready:
                continue
            chunk = os.read(read_end, 1 << 20)
            assert chunk, "the capture process exited"
            *lines, buffer = (buffer + chunk).split(b"\n")
            for line in lines:
                kind, _pid, _parent, _ns, argv, *_rest = json.loads(line)
                if kind == "lost":
                    lost.append(argv[0])
                elif kind == "exec" and argv and argv[-1] == f"{MARK}-end":
                    ended = True
                    break  # what follows is the last command's own
                elif kind == "exec" and argv[:1] != ["sh"] and "unshare" not in argv[:1]:
                    # an echo whose command line was read (or, gone within a millisecond,
                    # none: attributed by its parent's namespace, counted, not named; the
                    # share of those depends on the machine)
                    execs += 1
                    named += argv == ["/bin/echo", MARK]
        assert ended, "the last command never came through"
        assert not lost, f"the capture lost events: {lost}"
        assert execs == BURST, f"{BURST - execs} of {BURST} execs never forwarded"
        assert named, "no command line read at all"
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(ctl)
