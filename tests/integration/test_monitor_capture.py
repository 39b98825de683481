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
from pathlib import Path

import pytest

from coi_tui.monitor.daemon import start_capture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the proc connector needs root")

BURST = 4000  # forks, execs and exits: well beyond what a 4 MiB socket queues
MARK = f"coi-capture-{os.getpid()}-" + "x" * 4000  # 4000 lines of it fill the 1 MiB pipe


def test_a_daemon_that_stops_reading_loses_no_exec() -> None:
    read_end, pid, ctl = start_capture()
    # the burst's shell runs a marker for each "probe" line until "go": the test probes until
    # the capture forwards one (it is listening, and the namespace is watched), then lets go
    script = (
        f"while read cmd && [ \"$cmd\" != go ]; do /bin/sh -c 'sleep 0.2' {MARK}-start; done; "
        f"i=0; while [ $i -lt {BURST} ]; do /bin/echo {MARK} >/dev/null; "
        f"i=$((i+1)); done; /bin/sh -c 'sleep 0.2' {MARK}-end; true"
    )
    burst = subprocess.Popen(
        ["unshare", "-p", "-f", "--mount-proc", "sh", "-c", script], stdin=subprocess.PIPE
    )
    try:
        shell = wait_for_child(burst.pid)
        ours = os.readlink(f"/proc/{shell}/ns/pid")
        os.write(ctl, json.dumps([ours]).encode() + b"\n")  # as the daemon's tell_capture
        assert burst.stdin is not None
        buffer = b""
        ended = False
        deadline = time.monotonic() + 60
        while not ended and time.monotonic() < deadline:  # the capture is listening
            burst.stdin.write(b"probe\n")
            burst.stdin.flush()
            probe_until = time.monotonic() + 2
            while not ended and time.monotonic() < probe_until:
                ready, _, _ = select.select([read_end], [], [], 0.5)
                if ready:
                    *lines, buffer = (buffer + os.read(read_end, 1 << 20)).split(b"\n")
                    ended = any(f'"{MARK}-start"'.encode() in line for line in lines)
        assert ended, "the capture never forwarded a probe"
        burst.stdin.write(b"go\n")  # nothing is read from the capture meanwhile
        burst.stdin.close()
        assert burst.wait(timeout=300) == 0
        execs = named = 0
        lost: list[str] = []
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
                kind, _pid, _parent, pidns, argv, *_rest = json.loads(line)
                if kind == "lost":
                    lost.append(argv[0])
                elif kind != "exec" or pidns != ours:
                    continue
                elif argv and argv[-1] == f"{MARK}-end":
                    ended = True
                    break  # what follows is the last command's own
                elif not argv or argv[0] == "/bin/echo":
                    # an echo whose command line was read (or, gone within a millisecond,
                    # none: attributed by the namespace read at its event, counted, not
                    # named; the share of those depends on the machine)
                    execs += 1
                    named += argv == ["/bin/echo", MARK]
        assert not lost, f"the capture lost events: {lost}"
        assert ended, f"the last command never came through ({execs} execs before it)"
        assert execs == BURST, f"{BURST - execs} of {BURST} execs never forwarded"
        assert named, "no command line read at all"
    finally:
        burst.kill()
        burst.wait()
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
        os.close(read_end)
        os.close(ctl)


def wait_for_child(parent: int, timeout: float = 30) -> int:
    """The first child of `parent` (unshare's, in the new namespace), once it exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        except OSError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.01)
    raise AssertionError(f"unshare ({parent}) made no child within {timeout:g}s")
