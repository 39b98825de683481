"""What the host's /proc says about a container's processes: membership (pid namespace of the
container's init), command lines, file descriptors, sockets (read from the container's own
network namespace via /proc/<pid>/net/*) and I/O counters. Root reads every field."""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import stat
import struct
from dataclasses import dataclass, field

SOCKET_TABLES = ("tcp", "tcp6", "udp", "udp6")
TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True)
class Conn:
    proto: str
    local: str
    local_port: int
    remote: str
    remote_port: int
    state: str

    @property
    def outbound(self) -> bool:
        """A connection to (or a connected socket towards) another machine."""
        if self.state in ("LISTEN", "CLOSE"):
            return False
        if self.remote in ("0.0.0.0", "::") or self.remote_port == 0:
            return False
        return not (self.remote.startswith("127.") or self.remote in ("::1", "::ffff:127.0.0.1"))

    def as_dict(self) -> dict[str, object]:
        return {
            "protocol": self.proto,
            "local_addr": f"{self.local}:{self.local_port}",
            "remote_addr": f"{self.remote}:{self.remote_port}",
            "state": self.state,
        }


@dataclass
class Fd:
    num: int
    kind: str  # socket | fifo | tty | file | other
    key: tuple[int, int]  # (st_dev, st_ino): identity of the pipe/fifo/socket
    target: str


@dataclass
class Proc:
    pid: int
    ppid: int = 0
    comm: str = ""
    exe: str = ""
    cmdline: list[str] = field(default_factory=list)
    uid: int = -1

    @property
    def command(self) -> str:
        return " ".join(self.cmdline) or f"[{self.comm}]"

    def as_dict(self) -> dict[str, object]:
        return {"pid": self.pid, "ppid": self.ppid, "user": self.uid, "command": self.command}


def read_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def pid_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return ""


def all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def read_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return raw.decode("utf-8", "replace").rstrip("\0").split("\0") if raw else []


def read_proc(pid: int) -> Proc | None:
    raw = read_text(f"/proc/{pid}/stat")
    if not raw:
        return None
    # comm is in parentheses and may itself contain ") "
    comm = raw[raw.find("(") + 1 : raw.rfind(")")]
    rest = raw[raw.rfind(")") + 2 :].split()
    cmdline = [a for a in read_text(f"/proc/{pid}/cmdline").split("\0")]
    while cmdline and cmdline[-1] == "":
        cmdline.pop()
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    uid = -1
    for line in read_text(f"/proc/{pid}/status").splitlines():
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    return Proc(pid, int(rest[1]) if len(rest) > 1 else 0, comm, exe, cmdline, uid)


def read_fd(pid: int, num: int) -> Fd | None:
    path = f"/proc/{pid}/fd/{num}"
    try:
        target = os.readlink(path)
        st = os.stat(path)
    except OSError:
        return None
    if stat.S_ISSOCK(st.st_mode):
        kind = "socket"
    elif stat.S_ISFIFO(st.st_mode):
        kind = "fifo"
    elif stat.S_ISCHR(st.st_mode) and ("/pts/" in target or target.endswith("ptmx")):
        kind = "tty"
    elif stat.S_ISREG(st.st_mode):
        kind = "file"
    else:
        kind = "other"
    return Fd(num, kind, (st.st_dev, st.st_ino), target)


def list_fds(pid: int) -> list[Fd]:
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    out = []
    for name in names:
        fd = read_fd(pid, int(name))
        if fd is not None:
            out.append(fd)
    return out


def fd_mode(pid: int, num: int) -> int:
    """O_ACCMODE of the fd: 0 read, 1 write, 2 both (-1 unknown)."""
    for line in read_text(f"/proc/{pid}/fdinfo/{num}").splitlines():
        if line.startswith("flags:"):
            return int(line.split()[1], 8) & 3
    return -1


def _addr(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1]), int(port, 16)
    # /proc prints IPv6 as four host-order 32-bit words
    words = struct.unpack("<4I", raw)
    text = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    if text.startswith("::ffff:"):
        text = text[7:]
    return text, int(port, 16)


def inet_sockets(pid: int) -> dict[int, Conn]:
    """Socket inode -> connection, in the network namespace of `pid`."""
    table: dict[int, Conn] = {}
    for proto in SOCKET_TABLES:
        lines = read_text(f"/proc/{pid}/net/{proto}").splitlines()[1:]
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            try:
                local, lport = _addr(parts[1])
                remote, rport = _addr(parts[2])
            except ValueError:
                continue
            state = (
                TCP_STATES.get(parts[3], parts[3])
                if proto.startswith("tcp")
                else ("ESTABLISHED" if rport else "UNCONN")
            )
            table[int(parts[9])] = Conn(proto, local, lport, remote, rport, state)
    return table


# The kernel's own name for a socket's protocol (sockfs sets it at creation: "TCP",
# "TCPv6", "UDP", "UNIX", "UNIX-STREAM", "NETLINK", ...). Nothing in the container can choose
# or change it, unlike /proc/<pid>/net/unix, whose lines end with a socket's path or abstract
# name: a name holding a newline and a forged line there can claim any inode.
SOCKPROTONAME = "system.sockprotoname"
LOCAL_PROTOCOLS = ("UNIX", "NETLINK")


def socket_protocol(pid: int, num: int, inode: int) -> str:
    """The kernel's protocol name of socket fd `num` of `pid`, or "" when unknown (gone,
    replaced, or a kernel without the attribute). The fd is pinned with O_PATH and its inode
    checked against `inode` first, so a descriptor swapped in between cannot answer for
    another socket."""
    try:
        fd = os.open(f"/proc/{pid}/fd/{num}", os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if os.fstat(fd).st_ino != inode:
            return ""
        raw = os.getxattr(f"/proc/self/fd/{fd}", SOCKPROTONAME)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return raw.rstrip(b"\0").decode("ascii", "replace")


def is_local_protocol(protocol: str) -> bool:
    """A unix or netlink socket: never a connection to another machine."""
    return protocol.split("-", 1)[0] in LOCAL_PROTOCOLS


def net_ns(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""


def io_counters(pid: int) -> tuple[int, int]:
    """(rchar, wchar): every byte read()/written, page-cache hits included."""
    rchar = wchar = 0
    for line in read_text(f"/proc/{pid}/io").splitlines():
        if line.startswith("rchar:"):
            rchar = int(line.split()[1])
        elif line.startswith("wchar:"):
            wchar = int(line.split()[1])
    return rchar, wchar


def net_tx_bytes(host_iface: str) -> int:
    """Bytes the container sent = bytes received by its host-side veth."""
    try:
        with open(f"/sys/class/net/{host_iface}/statistics/rx_bytes") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def net_rx_bytes(host_iface: str) -> int:
    """Bytes the container received = bytes sent by its host-side veth."""
    try:
        with open(f"/sys/class/net/{host_iface}/statistics/tx_bytes") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def ifindex(iface: str) -> int:
    try:
        with open(f"/sys/class/net/{iface}/ifindex") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def read_source(pid: int) -> str:
    """Where a process's read() bytes most likely come from, judged from its open fds:
    'file' (a regular file open for reading, stdin included), 'socket' (holds sockets, no
    file), 'stream' (stdin is a pipe, or a device such as /dev/zero is open: gzip, nc, dd),
    or 'none' (nothing open: it read and closed its files)."""
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return "none"
    sockets = streams = False
    for name in names:
        num = int(name)
        path = f"/proc/{pid}/fd/{num}"
        try:
            mode = os.stat(path).st_mode
        except OSError:
            continue
        if stat.S_ISREG(mode):
            if num != 1 and num != 2 and fd_mode(pid, num) in (0, 2):
                return "file"
        elif stat.S_ISSOCK(mode):
            sockets = True
        elif stat.S_ISFIFO(mode):
            streams = streams or num == 0
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            with contextlib.suppress(OSError):
                if num > 2 and "/pts/" not in os.readlink(path) and fd_mode(pid, num) != 1:
                    streams = True
    return "socket" if sockets else "stream" if streams else "none"


def script_text(pid: int, path: str, limit: int = 65536) -> str | None:
    """The script a shell is running, read through the shell's own open descriptor of it
    (never by path: a path inside the container could be a symlink out of it). None when
    the shell has not opened it (yet)."""
    name = os.path.basename(path)
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return None
    for entry in names:
        fd_path = f"/proc/{pid}/fd/{entry}"
        try:
            target = os.readlink(fd_path)
            if not target.endswith("/" + name) and target != name:
                continue
            if not stat.S_ISREG(os.stat(fd_path).st_mode):
                continue
            # non-blocking: a FIFO swapped in between cannot stall the daemon
            fd = os.open(fd_path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    continue
                return os.read(fd, limit).decode("utf-8", "replace")
            finally:
                os.close(fd)
        except OSError:
            continue
    return None


# pidfd_getfd(2) has no os wrapper in Python 3.11; 438 on every architecture using the
# unified syscall table (x86_64 and arm64 included)
PIDFD_GETFD = 438
_IPPROTO_NAMES = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", 262: "mptcp", 132: "sctp"}
_TCP_STATES_BY_NUM = {int(k, 16): v for k, v in TCP_STATES.items()}
_syscall = None


def _pidfd_getfd(pid: int, num: int) -> int:
    """A copy of fd `num` of `pid` in this process (root only), or -1."""
    global _syscall
    if not hasattr(os, "pidfd_open") or os.uname().machine not in ("x86_64", "aarch64"):
        return -1
    if _syscall is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        libc.syscall.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_int, ctypes.c_uint]
        _syscall = libc.syscall
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return -1
    try:
        return int(_syscall(PIDFD_GETFD, pidfd, num, 0))
    finally:
        os.close(pidfd)


def socket_conn(pid: int, num: int, inode: int) -> tuple[str, Conn | None]:
    """Ask socket fd `num` of `pid` itself what it is, through a copy of the descriptor
    (pidfd_getfd, closed at once): ("inet", Conn) for an IPv4/IPv6 socket of any protocol
    (TCP, UDP, MPTCP, SCTP...), ("local", None) for unix and netlink sockets, ("other", None)
    for any other family, ("", None) when it cannot be asked (not root, gone, replaced: the
    caller falls back to the tables). Unlike the /proc/<pid>/net tables, the answer does not
    depend on the network namespace the socket was made in."""
    copy = _pidfd_getfd(pid, num)
    if copy < 0:
        return "", None
    try:
        st = os.fstat(copy)
        if st.st_ino != inode or not stat.S_ISSOCK(st.st_mode):
            return "", None
        sock = socket.socket(fileno=copy)  # owns the copy from here
    except OSError:
        os.close(copy)
        return "", None
    try:
        family = sock.family
        if family in (socket.AF_UNIX, socket.AF_NETLINK):
            return "local", None
        if family not in (socket.AF_INET, socket.AF_INET6):
            return "other", None
        proto = _IPPROTO_NAMES.get(sock.proto, f"ip{int(sock.proto)}")
        if family == socket.AF_INET6:
            proto += "6"
        local = sock.getsockname()
        try:
            remote = sock.getpeername()
        except OSError:
            remote = ("0.0.0.0" if family == socket.AF_INET else "::", 0)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            state = "LISTEN"
        elif sock.proto == socket.IPPROTO_TCP:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
            state = _TCP_STATES_BY_NUM.get(info[0], "ESTABLISHED" if remote[1] else "CLOSE")
        else:
            state = "ESTABLISHED" if remote[1] else "UNCONN"
        return "inet", Conn(
            proto, _plain(local[0]), int(local[1]), _plain(remote[0]), int(remote[1]), state
        )
    except OSError:
        return "", None
    finally:
        sock.close()


def socket_peer_pid(pid: int, num: int, inode: int) -> int:
    """The pid (host namespace) the kernel recorded for the other end of unix socket fd `num`
    of `pid` (SO_PEERCRED: the listener, the connecting process, or the socketpair's maker),
    or 0."""
    copy = _pidfd_getfd(pid, num)
    if copy < 0:
        return 0
    try:
        st = os.fstat(copy)
        if st.st_ino != inode or not stat.S_ISSOCK(st.st_mode):
            return 0
        raw = socket.socket(fileno=copy)  # owns the copy from here
    except OSError:
        os.close(copy)
        return 0
    try:
        if raw.family != socket.AF_UNIX:
            return 0
        cred = raw.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", cred)[0]
    except OSError:
        return 0
    finally:
        raw.close()


def _plain(addr: str) -> str:
    return addr[7:] if addr.startswith("::ffff:") else addr
