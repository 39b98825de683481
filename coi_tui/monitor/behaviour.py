"""Reverse shells judged by behaviour, not by command line (so renamed binaries, base64
wrappers and unusual interpreters change nothing):

- proc.revshell-socket-stdio: a process whose stdout or stderr is an inet socket connected to
  another machine, or whose stdin is and which reads its commands there (bash >& /dev/tcp,
  nc -e, python dup2, socat exec, `sh -s x` answering on stderr...), or a shell or
  interpreter with stdin on one and its output piped to a process holding one;
- proc.revshell-pipe-relay: a process whose stdin is fed, through pipes or FIFOs of any
  length, by a process holding such a connection, and whose stdout/stderr flow back to one
  (the mkfifo loop, interpreter loops that run commands with pipes), or whose stdio is a
  unix socket to such a process (its peer as the kernel recorded it, or an ancestor);
- proc.revshell-pty-relay: a shell or interpreter on a pseudo-terminal whose master side is held
  by a process with such a connection (python pty.spawn, socat pty, script).

A holder is a process with an inet socket that can carry a remote peer's bytes: connected to
another machine, or not connected and not bound to loopback (UDP sendto/recvfrom). Sockets are
asked what they are (a copy of the descriptor), whatever network namespace made them.

The coding agent itself talks to its API and runs commands through pipes, which is the same
shape; processes named like a known agent are therefore not counted as relays (documented gap:
the name is the process's own choice, so a relay named like the agent is not a holder).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from coi_tui.monitor import procfs
from coi_tui.monitor.events import Threat
from coi_tui.monitor.rules import base, is_interpreter, is_shell, threat

AGENT_NAMES = {"claude", "opencode", "aider", "dummy", "codex", "gemini"}
DEPTH = 3


@dataclass
class ContainerView:
    """One pass over a container's processes (built lazily: most passes stop at stdio).

    A socket is judged by the kernel's own word only: its protocol name (sockfs) and the inet
    tables (/proc/<pid>/net/tcp, tcp6, udp, udp6), which hold addresses and inodes and no
    text a process chooses. /proc/<pid>/net/unix is never read: a unix socket's name is the
    container's to pick, and one holding a newline and a forged line made a reverse shell's
    TCP socket look like a unix socket."""

    init_pid: int
    pids: list[int]
    # inodes the kernel named unix or netlink sockets (shared with later passes)
    known_local: set[int] = field(default_factory=set)
    _tables: dict[str, dict[int, procfs.Conn]] = field(default_factory=dict)
    fds: dict[int, list[procfs.Fd]] = field(default_factory=dict)
    procs: dict[int, procfs.Proc | None] = field(default_factory=dict)

    @property
    def inet(self) -> dict[int, procfs.Conn]:
        return self._table(self.init_pid, "init")

    def _table(self, pid: int, key: str) -> dict[int, procfs.Conn]:
        if key not in self._tables:
            self._tables[key] = procfs.inet_sockets(pid)
        return self._tables[key]

    def proc(self, pid: int) -> procfs.Proc | None:
        if pid not in self.procs:
            self.procs[pid] = procfs.read_proc(pid)
        return self.procs[pid]

    def all_fds(self, pid: int) -> list[procfs.Fd]:
        if pid not in self.fds:
            self.fds[pid] = procfs.list_fds(pid)
        return self.fds[pid]

    def connection(self, pid: int, fd: procfs.Fd | None) -> procfs.Conn | None:
        """The inet connection behind socket fd `fd` of `pid`, or None."""
        if fd is None or fd.kind != "socket":
            return None
        inode = fd.key[1]
        if inode in self.known_local:
            return None
        # the socket itself first: the tables only list a socket in the network namespace it
        # was made in, which the process may have left (setns) or handed it out of
        kind, asked = procfs.socket_conn(pid, fd.num, inode)
        if kind == "inet":
            return asked
        if kind == "local":
            self.known_local.add(inode)
            return None
        if kind == "other":
            return None
        # /proc/<pid>/net/tcp walks the host's whole TCP table (milliseconds): the kernel's
        # protocol name rules out unix sockets (journald's stdout, dbus...) first
        protocol = procfs.socket_protocol(pid, fd.num, inode)
        if procfs.is_local_protocol(protocol):
            self.known_local.add(inode)
            return None
        conn = self.inet.get(inode)
        if conn is None and pid != self.init_pid:
            # a process in a network namespace of its own (container root can make one)
            netns = procfs.net_ns(pid)
            if netns and netns != procfs.net_ns(self.init_pid):
                conn = self._table(pid, netns).get(inode)
        return conn

    def outbound(self, pid: int, fd: procfs.Fd | None) -> procfs.Conn | None:
        conn = self.connection(pid, fd)
        return conn if conn is not None and conn.outbound else None


def _stdio(pid: int) -> list[procfs.Fd | None]:
    return [procfs.read_fd(pid, n) for n in (0, 1, 2)]


def is_agent(proc: procfs.Proc | None) -> bool:
    if proc is None:
        return False
    names = {base(proc.exe), proc.comm, base(proc.cmdline[0]) if proc.cmdline else ""}
    return bool(names & AGENT_NAMES)


def reads_commands(proc: procfs.Proc | None) -> bool:
    """Whether the process takes its commands from stdin: a shell or interpreter started
    with nothing but flags (`sh`, `sh -i`, `/tmp/s -i`, `bash -l`, `python3 -`), as a shell on
    the end of a reverse connection is. `sh -c CMD` or `sh build.sh` (npm and make run
    scripts with piped stdio while holding connections) read their commands elsewhere."""
    if proc is None or not proc.cmdline:
        return False
    args = proc.cmdline[1:]
    if any(a == "-c" or (a.startswith("-") and not a.startswith("--") and "c" in a) for a in args):
        return False
    return all(a.startswith(("-", "+")) for a in args)


def analyse(view: ContainerView, only: set[int] | None = None) -> list[Threat]:
    """All three rules over the container (or only the pids in `only` as suspects)."""
    threats: list[Threat] = []
    stdio = {pid: _stdio(pid) for pid in (only if only is not None else view.pids)}
    pipe_suspects: list[int] = []
    pair_suspects: list[int] = []
    tty_suspects: list[int] = []
    stdin_net: dict[int, procfs.Conn] = {}
    for pid, fds in stdio.items():
        fd0, fd1, fd2 = fds
        # stdout or stderr on a connection: a shell answering a remote peer (`sh -s x` answers
        # on stderr with stdout on /dev/null). stdin alone on one is also
        # `bash -c '</dev/tcp/db/5432'` (a wait-for-port probe): only a process that reads its
        # commands from that stdin counts then, or a shell or interpreter whose output flows
        # through pipes to a process holding a connection (judged below).
        conn = view.outbound(pid, fd1) or view.outbound(pid, fd2)
        if conn is None:
            inbound = view.outbound(pid, fd0)
            if inbound is not None:
                if reads_commands(view.proc(pid)):
                    conn = inbound
                elif any(f is not None and f.kind == "fifo" for f in (fd1, fd2)):
                    stdin_net[pid] = inbound
        if conn is not None:
            threats.append(
                _report(
                    view,
                    pid,
                    "proc.revshell-socket-stdio",
                    "standard input/output is a network connection",
                    conn,
                )
            )
            continue
        if (
            fd0 is not None
            and fd0.kind == "fifo"
            and any(f is not None and f.kind == "fifo" for f in (fd1, fd2))
            and reads_commands(view.proc(pid))
        ):
            pipe_suspects.append(pid)
        elif (
            fd0 is not None
            and fd0.kind == "socket"
            and any(f is not None and f.kind == "socket" for f in (fd1, fd2))
            and reads_commands(view.proc(pid))
        ):
            pair_suspects.append(pid)  # socketpairs (node's child_process, libuv)
        elif fd0 is not None and fd0.kind == "tty" and "/pts/" in fd0.target:
            tty_suspects.append(pid)
    if not pipe_suspects and not tty_suspects and not pair_suspects and not stdin_net:
        return threats
    holders = _net_holders(view)
    if not holders:
        return threats
    readers, writers = _pipe_ends(view)
    for pid, inbound in stdin_net.items():
        proc = view.proc(pid)
        if not _shell_like(proc):
            continue
        down = _walk(view, pid, 1, readers, holders, upstream=False) or _walk(
            view, pid, 2, readers, holders, upstream=False
        )
        if down is not None:
            threats.append(
                _report(
                    view,
                    pid,
                    "proc.revshell-socket-stdio",
                    f"standard input is a network connection, output piped to process {down} "
                    "holding a network connection",
                    inbound,
                )
            )
    for pid in pair_suspects:
        # the kernel's record of who is at the other end of the shell's unix socket (the
        # listener it connected to, or the maker of a socketpair), then its ancestors
        fd0 = stdio[pid][0]
        peer = procfs.socket_peer_pid(pid, 0, fd0.key[1]) if fd0 is not None else 0
        if peer and peer != pid and peer in holders:
            threats.append(
                _report(
                    view,
                    pid,
                    "proc.revshell-pipe-relay",
                    f"stdin is a unix socket to process {peer} holding a network connection",
                    holders[peer],
                )
            )
            continue
        ancestor = view.proc(pid)
        for _ in range(DEPTH):
            if ancestor is None or ancestor.ppid <= 1:
                break
            if ancestor.ppid in holders:
                threats.append(
                    _report(
                        view,
                        pid,
                        "proc.revshell-pipe-relay",
                        f"stdin and stdout are socketpairs of process {ancestor.ppid} holding a "
                        "network connection",
                        holders[ancestor.ppid],
                    )
                )
                break
            ancestor = view.proc(ancestor.ppid)
    for pid in pipe_suspects:
        if pid in holders:
            continue
        up = _walk(view, pid, 0, writers, holders, upstream=True)
        down = _walk(view, pid, 1, readers, holders, upstream=False) or _walk(
            view, pid, 2, readers, holders, upstream=False
        )
        if up is not None and down is not None:
            threats.append(
                _report(
                    view,
                    pid,
                    "proc.revshell-pipe-relay",
                    f"stdin and stdout are piped to process {up} holding a network connection",
                    holders[up],
                )
            )
    for pid in tty_suspects:
        proc = view.proc(pid)
        if proc is None or not (is_shell(base(proc.exe)) or is_interpreter(base(proc.exe))):
            continue
        pts = stdio[pid][0].target.rsplit("/", 1)[-1]  # type: ignore[union-attr]
        for holder, conn in holders.items():
            if holder != pid and _holds_master(view, holder, pts):
                threats.append(
                    _report(
                        view,
                        pid,
                        "proc.revshell-pty-relay",
                        f"terminal driven by process {holder} holding a network connection",
                        conn,
                    )
                )
                break
    return threats


def _shell_like(proc: procfs.Proc | None) -> bool:
    if proc is None:
        return False
    names = {base(proc.exe), base(proc.cmdline[0]) if proc.cmdline else "", proc.comm}
    return any(n and (is_shell(n) or is_interpreter(n)) for n in names)


def reaches_out(conn: procfs.Conn) -> bool:
    """A socket that can carry a remote peer's bytes: connected to another machine, or an
    inet socket not bound to loopback that is not connected (UDP sendto/recvfrom to any
    address). Listening sockets are not: what they accept is a socket of its own."""
    if conn.outbound:
        return True
    if conn.state in ("LISTEN", "CLOSE") or conn.remote_port != 0:
        return False
    return not (conn.local.startswith("127.") or conn.local in ("::1", "::ffff:127.0.0.1"))


def _net_holders(view: ContainerView) -> dict[int, procfs.Conn]:
    holders: dict[int, procfs.Conn] = {}
    for pid in view.pids:
        for fd in view.all_fds(pid):
            if fd.kind != "socket":
                continue
            conn = view.connection(pid, fd)
            if conn is not None and reaches_out(conn):
                if not is_agent(view.proc(pid)):
                    holders[pid] = conn
                break
    return holders


def _pipe_ends(
    view: ContainerView,
) -> tuple[dict[tuple[int, int], set[int]], dict[tuple[int, int], set[int]]]:
    readers: dict[tuple[int, int], set[int]] = {}
    writers: dict[tuple[int, int], set[int]] = {}
    for pid in view.pids:
        for fd in view.all_fds(pid):
            if fd.kind != "fifo":
                continue
            mode = procfs.fd_mode(pid, fd.num)
            if mode in (0, 2):
                readers.setdefault(fd.key, set()).add(pid)
            if mode in (1, 2):
                writers.setdefault(fd.key, set()).add(pid)
    return readers, writers


def _walk(
    view: ContainerView,
    pid: int,
    num: int,
    ends: dict[tuple[int, int], set[int]],
    holders: dict[int, procfs.Conn],
    upstream: bool,
) -> int | None:
    """Follow fd `num` of pid through pipes and FIFOs (to their writers upstream, readers
    downstream) to a process holding a connection; its pid, or None. Intermediate processes
    (cat, tee, a renamed copy...) are followed through any FIFO they read (or write), since
    relays often open the named pipe themselves rather than using stdin."""
    fd = next((f for f in view.all_fds(pid) if f.num == num), None)
    if fd is None or fd.kind != "fifo":
        return None
    return _follow(view, pid, fd.key, ends, holders, upstream)


def _follow(
    view: ContainerView,
    pid: int,
    key: tuple[int, int],
    ends: dict[tuple[int, int], set[int]],
    holders: dict[int, procfs.Conn],
    upstream: bool,
) -> int | None:
    """Breadth-first over the pipe graph, each process and pipe expanded once (linear in
    the container's fds, no depth limit: a relay chain may be any length)."""
    wanted = (0, 2) if upstream else (1, 2)
    seen_pids = {pid}
    seen_keys = {key}
    queue = deque([key])
    while queue:
        current = queue.popleft()
        for other in sorted(ends.get(current, set()) - seen_pids):
            if other in holders:
                return other
            seen_pids.add(other)
            for fd in view.all_fds(other):
                if fd.kind != "fifo" or fd.key in seen_keys:
                    continue
                if procfs.fd_mode(other, fd.num) not in wanted:
                    continue
                seen_keys.add(fd.key)
                queue.append(fd.key)
    return None


def _holds_master(view: ContainerView, pid: int, pts: str) -> bool:
    for fd in view.all_fds(pid):
        if fd.target.endswith("ptmx"):
            info = procfs.read_text(f"/proc/{pid}/fdinfo/{fd.num}")
            for line in info.splitlines():
                if line.startswith("tty-index:") and line.split()[1] == pts:
                    return True
    return False


def _report(view: ContainerView, pid: int, rule: str, why: str, conn: procfs.Conn) -> Threat:
    # keyed by the connection: the shell's children share it and are the same incident
    proc = view.proc(pid)
    command = proc.command[:300] if proc else str(pid)
    evidence: dict[str, object] = {
        "process": {
            "pid": pid,
            "command": command,
            "user": proc.uid if proc else -1,
            "pattern": rule,
            "indicators": [why, f"peer {conn.remote}:{conn.remote_port} ({conn.proto})"],
        }
    }
    return threat(
        rule,
        "critical",
        "process",
        "Reverse shell detected",
        f"{base(proc.exe) if proc else pid}: {why} ({conn.remote}:{conn.remote_port})",
        evidence,
        f"{conn.local_port}->{conn.remote}:{conn.remote_port}",
    )
