"""Two kernel event feeds over raw netlink, with struct packing only (no pyroute2):

- the proc connector (NETLINK_CONNECTOR, CN_IDX_PROC): fork/exec/exit of every process on the
  host, containers included, as they happen;
- NFLOG (NETLINK_NETFILTER, subsystem ULOG): packets that our nft `log group N` rules copy to
  userspace, bound with a queue threshold of 1 so nothing waits in a kernel batch.

Both need root (CAP_NET_ADMIN) in the initial namespaces.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from dataclasses import dataclass

NETLINK_CONNECTOR = 11
NETLINK_NETFILTER = 12
CN_IDX_PROC = 1
CN_VAL_PROC = 1
PROC_CN_MCAST_LISTEN = 1
NLMSG_DONE = 3
NLMSG_ERROR = 2

PROC_EVENT_FORK = 0x00000001
PROC_EVENT_EXEC = 0x00000002
PROC_EVENT_UID = 0x00000004
PROC_EVENT_GID = 0x00000040
PROC_EVENT_EXIT = 0x80000000

NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
CN_MSG = struct.Struct("=IIIIHH")  # idx, val, seq, ack, len, flags
PROC_HDR = struct.Struct("=IIQ")  # what, cpu, timestamp_ns
# Room for a boot storm's events (every process of the host is reported) while the reader is
# busy reading /proc for the ones before: each queued datagram costs about 1 KiB of it.
PROC_RCVBUF = 16 << 20
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)


def receive_buffer(sock: socket.socket, size: int) -> None:
    """Ask for `size` bytes of receive buffer: beyond net.core.rmem_max as root (the
    daemon), else as much as that cap allows."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, size)
    except OSError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


@dataclass(frozen=True)
class ProcEvent:
    kind: str  # fork | exec | exit | uid | gid
    pid: int  # the process (child for fork)
    parent: int = 0  # fork only
    real: int = -1  # uid and gid only: the new real and effective id (host view)
    effective: int = -1
    status: int = 0  # exit only: the wait status


class ProcConnector:
    """Subscribes to the proc connector; `read()` returns the events of one datagram."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_CONNECTOR)
        receive_buffer(self.sock, PROC_RCVBUF)
        self.sock.bind((os.getpid(), CN_IDX_PROC))
        op = struct.pack("=I", PROC_CN_MCAST_LISTEN)
        cn = CN_MSG.pack(CN_IDX_PROC, CN_VAL_PROC, 0, 0, len(op), 0) + op
        self.sock.send(NLMSG_HDR.pack(NLMSG_HDR.size + len(cn), NLMSG_DONE, 0, 0, os.getpid()) + cn)

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[ProcEvent]:
        """Every event queued now (drained without blocking after the first datagram)."""
        events: list[ProcEvent] = []
        flags = 0
        while True:
            try:
                data = self.sock.recv(65536, flags)
            except BlockingIOError:
                return events
            except OSError:  # ENOBUFS: events were lost; the periodic /proc pass covers them
                return events
            events.extend(parse_proc_events(data))
            flags = socket.MSG_DONTWAIT

    def close(self) -> None:
        self.sock.close()


def parse_proc_events(data: bytes) -> list[ProcEvent]:
    events: list[ProcEvent] = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length = NLMSG_HDR.unpack_from(data, offset)[0]
        if length < NLMSG_HDR.size:
            break
        body = offset + NLMSG_HDR.size + CN_MSG.size
        if body + PROC_HDR.size <= offset + length:
            what = PROC_HDR.unpack_from(data, body)[0]
            payload = body + PROC_HDR.size
            if what == PROC_EVENT_EXEC:
                _pid, tgid = struct.unpack_from("=ii", data, payload)
                events.append(ProcEvent("exec", tgid))
            elif what == PROC_EVENT_FORK:
                _ppid, ptgid, cpid, ctgid = struct.unpack_from("=iiii", data, payload)
                if cpid == ctgid:  # a new process, not a thread
                    events.append(ProcEvent("fork", ctgid, ptgid))
            elif what == PROC_EVENT_EXIT:
                pid, tgid, status = struct.unpack_from("=iiI", data, payload)
                if pid == tgid:
                    events.append(ProcEvent("exit", tgid, status=status))
            elif what in (PROC_EVENT_UID, PROC_EVENT_GID):  # a set[ug]id exec or call
                _pid, tgid, real, effective = struct.unpack_from("=iiII", data, payload)
                kind = "uid" if what == PROC_EVENT_UID else "gid"
                events.append(ProcEvent(kind, tgid, real=real, effective=effective))
        offset += (length + 3) & ~3
    return events


# --------------------------------------------------------------------------- NFLOG
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFULA_CFG_CMD = 1
NFULA_CFG_MODE = 2
NFULA_CFG_TIMEOUT = 3
NFULA_CFG_QTHRESH = 4
NFULNL_CFG_CMD_BIND = 1
NFULNL_CFG_CMD_UNBIND = 2
NFULNL_COPY_PACKET = 2
NFULA_PACKET_HDR = 1
NFULA_IFINDEX_INDEV = 4
NFULA_IFINDEX_PHYSINDEV = 6
NFULA_PAYLOAD = 9
NFULA_PREFIX = 10
NLM_F_REQUEST = 1
NLM_F_ACK = 4
NLA_HDR = struct.Struct("=HH")


@dataclass(frozen=True)
class LoggedPacket:
    prefix: str
    indev: int
    physindev: int
    payload: bytes  # from the network header


def _nla(kind: int, value: bytes) -> bytes:
    length = NLA_HDR.size + len(value)
    return NLA_HDR.pack(length, kind) + value + b"\0" * ((4 - length % 4) % 4)


class NflogReader:
    """Binds one NFLOG group (family-agnostic, so `bridge` table rules reach it too)."""

    def __init__(self, group: int, copy_range: int = 512) -> None:
        self.group = group
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        receive_buffer(self.sock, 4 << 20)
        self.sock.bind((0, 0))
        self.seq = 0
        self._config(_nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_BIND)))
        self._config(
            _nla(NFULA_CFG_MODE, struct.pack(">IBx", copy_range, NFULNL_COPY_PACKET))
            + _nla(NFULA_CFG_QTHRESH, struct.pack(">I", 1))
            + _nla(NFULA_CFG_TIMEOUT, struct.pack(">I", 1))
        )

    def _config(self, attrs: bytes, family: int = socket.AF_UNSPEC) -> None:
        self.seq += 1
        body = struct.pack("=BBH", family, 0, socket.htons(self.group)) + attrs
        kind = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG
        header = NLMSG_HDR.pack(
            NLMSG_HDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK, self.seq, 0
        )
        self.sock.send(header + body)
        # Wait for the ack so a failed bind (group taken, no permission) is one clear error.
        while True:
            reply = self.sock.recv(65536)
            _length, mtype, _flags, seq, _pid = NLMSG_HDR.unpack_from(reply, 0)
            if mtype == NLMSG_ERROR and seq == self.seq:
                error = struct.unpack_from("=i", reply, NLMSG_HDR.size)[0]
                if error:
                    raise OSError(-error, f"NFLOG group {self.group}: {os.strerror(-error)}")
                return

    def fileno(self) -> int:
        return self.sock.fileno()

    def read(self) -> list[LoggedPacket]:
        try:
            data = self.sock.recv(1 << 17)
        except OSError:
            return []
        return parse_nflog(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._config(_nla(NFULA_CFG_CMD, struct.pack("B", NFULNL_CFG_CMD_UNBIND)))
        self.sock.close()


def parse_nflog(data: bytes) -> list[LoggedPacket]:
    packets: list[LoggedPacket] = []
    offset = 0
    while offset + NLMSG_HDR.size <= len(data):
        length, mtype, _flags, _seq, _pid = NLMSG_HDR.unpack_from(data, offset)
        if length < NLMSG_HDR.size:
            break
        if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
            attrs = parse_attrs(data[offset + NLMSG_HDR.size + 4 : offset + length])
            packets.append(
                LoggedPacket(
                    prefix=attrs.get(NFULA_PREFIX, b"").rstrip(b"\0").decode("ascii", "replace"),
                    indev=_be32(attrs.get(NFULA_IFINDEX_INDEV)),
                    physindev=_be32(attrs.get(NFULA_IFINDEX_PHYSINDEV)),
                    payload=attrs.get(NFULA_PAYLOAD, b""),
                )
            )
        offset += (length + 3) & ~3
    return packets


def _be32(raw: bytes | None) -> int:
    return struct.unpack(">I", raw[:4])[0] if raw and len(raw) >= 4 else 0


def parse_attrs(data: bytes) -> dict[int, bytes]:
    attrs: dict[int, bytes] = {}
    offset = 0
    while offset + NLA_HDR.size <= len(data):
        length, kind = NLA_HDR.unpack_from(data, offset)
        if length < NLA_HDR.size:
            break
        attrs[kind & 0x3FFF] = data[offset + NLA_HDR.size : offset + length]
        offset += (length + 3) & ~3
    return attrs
