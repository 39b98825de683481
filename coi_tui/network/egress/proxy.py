"""The egress proxy: one asyncio server per coi bridge, running as the user, that containers
reach without knowing it (coi-netctl redirects their TCP to the web ports to it, see
netctl.container_rules). For each connection it reads the name asked for (TLS SNI or HTTP
Host, wire.py), decides by the container's policy (policy.py), resolves the name itself on
the host and dials that address: the container never chooses where an allowed name leads,
so an allowed name on an attacker's address, or a second name on an allowed address, gains
nothing. Every decision becomes one JSONL record (`record`).

No decryption: what a TLS connection carries after its ClientHello is not seen (a CDN that
routes by the encrypted Host, "domain fronting", is beyond any SNI filter).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from coi_tui.network.egress import wire
from coi_tui.network.egress.policy import EgressPolicy, clean_name
from coi_tui.network.netctl import public_host

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the socket module lacks it
FIRST_BYTES_TIMEOUT = 10.0  # for the ClientHello or request head
CONNECT_TIMEOUT = 10.0
CHUNK = 256 * 1024
TLS_ACCESS_DENIED = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x31])  # fatal alert 49
HOST_TAIL = 512  # bytes of a kept-alive HTTP stream kept to find a Host split over reads


def original_destination(sock: socket.socket) -> tuple[str, int] | None:
    """Where the container sent this connection before the redirect."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    port, address = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(address), port


class Policies(Protocol):
    def lookup(self, address: str) -> tuple[str, EgressPolicy] | None:
        """The container that has this source address and its policy, None when unknown."""
        ...


@dataclass
class Flow:
    container: str
    source: str
    port: int
    kind: str = ""  # "tls" or "http"
    name: str = ""
    address: str = ""  # what the proxy dialed
    decision: str = "denied"
    reason: str = ""
    bytes_out: int = 0  # container -> internet
    bytes_in: int = 0
    started: float = field(default_factory=time.monotonic)

    def record(self) -> dict[str, Any]:
        return {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "container": self.container,
            "type": "connection",
            "protocol": self.kind,
            "domain": self.name,
            "port": self.port,
            "address": self.address,
            "source": self.source,
            "decision": self.decision,
            "reason": self.reason,
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "duration_ms": round((time.monotonic() - self.started) * 1000, 1),
        }


class NameCache:
    """Host-side A lookups, kept for their TTL (at most `longest` seconds)."""

    def __init__(self, lookup: Callable[[str], tuple[list[str], int | None]], longest: float = 60):
        self.lookup = lookup
        self.longest = longest
        self.entries: dict[str, tuple[float, list[str]]] = {}

    async def addresses(self, name: str) -> list[str]:
        now = time.monotonic()
        hit = self.entries.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            found, ttl = await asyncio.get_running_loop().run_in_executor(None, self.lookup, name)
        except (OSError, ValueError):
            found, ttl = [], None
        keep = min(self.longest, float(ttl if ttl is not None else self.longest))
        if len(self.entries) > 4096:
            self.entries.clear()
        self.entries[name] = (now + max(keep, 1.0), found)
        return found


class EgressProxy:
    def __init__(
        self,
        policies: Policies,
        lookup: Callable[[str], tuple[list[str], int | None]],
        record: Callable[[dict[str, Any]], None],
        listen: tuple[str, int],
        destination: Callable[[socket.socket], tuple[str, int] | None] = original_destination,
    ) -> None:
        self.policies = policies
        self.destination = destination
        self.names = NameCache(lookup)
        self.record = record
        self.listen = listen
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen; returns the port (the one asked for, or any free one when it is 0)."""
        self.server = await asyncio.start_server(
            self.handle, self.listen[0], self.listen[1], reuse_address=True, limit=CHUNK
        )
        port = int(self.server.sockets[0].getsockname()[1])
        self.listen = (self.listen[0], port)
        return port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        peer = writer.get_extra_info("peername") or ("", 0)
        try:
            await self.serve(reader, writer, sock, f"{peer[0]}:{peer[1]}", str(peer[0]))
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def serve(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sock: socket.socket,
        source: str,
        address: str,
    ) -> None:
        target = self.destination(sock)
        loop = asyncio.get_running_loop()
        known = await loop.run_in_executor(None, self.policies.lookup, address)
        if known is None or target is None or target == self.listen:
            # not one of our containers, or a direct connection to the proxy's own port
            return
        container, policy = known
        flow = Flow(container, source, target[1])
        first = await self.first_bytes(reader, flow)
        if flow.name:
            decision = policy.decide(flow.name, flow.port)
            flow.decision = "allowed" if decision.allowed else "denied"
            flow.reason = decision.reason
        others = wire.other_hosts(first, flow.name) if flow.kind == "http" else []
        if flow.decision == "allowed" and others:  # a second request in the first bytes
            flow.decision, flow.reason = "denied", f"a later request asked for {others[0]}"
        if flow.decision != "allowed":
            await self.refuse(writer, flow)
            return
        upstream = await self.dial(flow, policy)
        if upstream is None:
            await self.refuse(writer, flow)
            return
        up_reader, up_writer = upstream
        try:
            up_writer.write(first)
            flow.bytes_out += len(first)
            await asyncio.gather(
                self.pump(reader, up_writer, flow, outbound=True, tail=first[-HOST_TAIL:]),
                self.pump(up_reader, writer, flow, outbound=False),
            )
        finally:
            up_writer.close()
            self.record(flow.record())

    async def first_bytes(self, reader: asyncio.StreamReader, flow: Flow) -> bytes:
        """The ClientHello or request head (whatever arrived when it is complete)."""
        data = b""
        deadline = time.monotonic() + FIRST_BYTES_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                flow.reason = "no TLS ClientHello or HTTP request in time"
                return data
            try:
                chunk = await asyncio.wait_for(reader.read(wire.MAX_HELLO), left)
            except TimeoutError:
                chunk = b""
                flow.reason = "no TLS ClientHello or HTTP request in time"
                return data
            if not chunk:
                flow.reason = "closed before naming a host"
                return data
            data += chunk
            flow.kind = "tls" if wire.looks_like_tls(data) else "http"
            name = wire.tls_server_name(data) if flow.kind == "tls" else wire.http_host(data)
            if name == wire.NEED_MORE and len(data) < wire.MAX_HELLO:
                continue
            if name in (wire.NONE, wire.NEED_MORE):
                flow.reason = (
                    "TLS without a server name (SNI)"
                    if flow.kind == "tls"
                    else "not an HTTP request with one Host header"
                )
                return data
            flow.name = clean_name(name) or name[:253]
            return data

    async def dial(
        self, flow: Flow, policy: EgressPolicy
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        found = await self.names.addresses(flow.name)
        usable = [a for a in found if policy.allow_local or public_host(a)]
        if not usable:
            flow.decision = "denied"
            flow.reason = (
                "resolves only to local addresses" if found else "the name does not resolve"
            )
            return None
        for address in usable:
            try:
                opened = await asyncio.wait_for(
                    asyncio.open_connection(address, flow.port, limit=CHUNK), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                continue
            flow.address = address
            with contextlib.suppress(OSError):
                opened[1].get_extra_info("socket").setsockopt(
                    socket.IPPROTO_TCP, socket.TCP_NODELAY, 1
                )
            return opened
        flow.decision = "failed"
        flow.reason = f"could not connect to {', '.join(usable[:3])} port {flow.port}"
        return None

    async def refuse(self, writer: asyncio.StreamWriter, flow: Flow) -> None:
        if flow.decision == "allowed":
            flow.decision = "denied"
        if flow.kind == "tls":
            writer.write(TLS_ACCESS_DENIED)
        elif flow.kind == "http":
            body = f"coi egress: {flow.name or 'this request'} is {flow.decision}: {flow.reason}\n"
            writer.write(
                (
                    f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                    f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
                ).encode()
            )
        with contextlib.suppress(OSError, ConnectionError):
            await writer.drain()
        self.record(flow.record())

    async def pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        flow: Flow,
        outbound: bool,
        tail: bytes = b"",
    ) -> None:
        try:
            while True:
                chunk = await reader.read(CHUNK)
                if not chunk:
                    break
                if outbound and flow.kind == "http":
                    # a kept-alive connection may ask for another host in a later request
                    others = wire.other_hosts(tail + chunk, flow.name)
                    if others:
                        flow.decision = "denied"
                        flow.reason = f"a later request asked for {others[0]}"
                        writer.close()
                        return
                    tail = (tail + chunk)[-HOST_TAIL:]
                writer.write(chunk)
                if outbound:
                    flow.bytes_out += len(chunk)
                else:
                    flow.bytes_in += len(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()
