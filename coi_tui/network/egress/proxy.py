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
import fcntl
import ipaddress
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from coi_tui.network.egress import wire
from coi_tui.network.egress.holds import Holds, not_approved
from coi_tui.network.egress.policy import EgressPolicy, clean_name
from coi_tui.network.netctl import METADATA, PRIVATE, SPECIAL, host_addresses, public_host

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; the socket module lacks it
LOCAL_ONLY = tuple(ipaddress.IPv4Network(n) for n in (METADATA, *SPECIAL))
PRIVATE_NETS = tuple(ipaddress.IPv4Network(n) for n in PRIVATE)
PER_SOURCE = 256  # connections of one container at a time (a flood cannot starve the rest)
DIAL_TRIES = 3  # addresses of a name tried, at most
KEEPALIVE = ((socket.TCP_KEEPIDLE, 60), (socket.TCP_KEEPINTVL, 10), (socket.TCP_KEEPCNT, 6))
FIRST_BYTES_TIMEOUT = 10.0  # for the ClientHello or request head
CONNECT_TIMEOUT = 10.0
CHUNK = 1024 * 1024
TLS_ACCESS_DENIED = bytes([0x15, 0x03, 0x01, 0x00, 0x02, 0x02, 0x31])  # fatal alert 49
HOST_TAIL = 512  # bytes of a kept-alive HTTP stream kept to find a Host split over reads


class HostAddresses:
    """This host's own IPv4 addresses (read again once a minute): never dialed for a
    container, whatever a name resolves to."""

    def __init__(self, read: Callable[[], list[str]]) -> None:
        self.read = read
        self.known: frozenset[str] = frozenset()
        self.read_at = -1e9

    def get(self) -> frozenset[str]:
        if time.monotonic() - self.read_at > 60:
            self.known = frozenset(self.read())
            self.read_at = time.monotonic()
        return self.known


def dialable(address: str, policy: EgressPolicy, own: frozenset[str]) -> bool:
    """Where the proxy may connect for a container: public addresses, and with
    allow_local the private ranges; never this host (loopback, its own addresses, the
    bridge's gateway), the cloud metadata range or anything special."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return False
    if address in own or any(ip in net for net in LOCAL_ONLY):
        return False
    if public_host(address):
        return True
    return policy.allow_local and any(ip in net for net in PRIVATE_NETS)


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

    def policy(self, container: str) -> EgressPolicy | None:
        """The container's policy as it is now (None when it has none any more)."""
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
    hold_id: str = ""  # it waited for the operator (holds.py)
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
            **({"hold_id": self.hold_id} if self.hold_id else {}),
        }


class NameCache:
    """Host-side A lookups, kept for their TTL (at most `longest` seconds); a failure is kept
    too, and concurrent asks for one name share one lookup."""

    def __init__(self, lookup: Callable[[str], tuple[list[str], int | None]], longest: float = 60):
        self.lookup = lookup
        self.longest = longest
        self.entries: dict[str, tuple[float, list[str]]] = {}
        self.asking: dict[str, asyncio.Future[list[str]]] = {}

    async def addresses(self, name: str) -> list[str]:
        hit = self.entries.get(name)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        asking = self.asking.get(name)
        if asking is not None:
            return await asyncio.shield(asking)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[str]] = loop.create_future()
        self.asking[name] = future
        try:
            try:
                found, ttl = await loop.run_in_executor(None, self.lookup, name)
            except (OSError, ValueError):
                future.set_result([])
                return []  # not kept: a resolver that failed may answer next time
            keep = min(self.longest, float(ttl if ttl is not None else self.longest))
            if len(self.entries) > 4096:
                self.entries.clear()
            self.entries[name] = (time.monotonic() + max(keep, 1.0), found)
            future.set_result(found)
            return found
        finally:
            del self.asking[name]
            if not future.done():
                future.set_result([])


class EgressProxy:
    """Asyncio accepts, reads the first bytes, decides and dials; then two threads per
    connection move the bytes with splice(2) (socket -> pipe -> socket, no copy through
    Python), except a plain HTTP connection's requests, which are read to check each Host."""

    def __init__(
        self,
        policies: Policies,
        lookup: Callable[[str], tuple[list[str], int | None]],
        record: Callable[[dict[str, Any]], None],
        listen: tuple[str, int],
        destination: Callable[[socket.socket], tuple[str, int] | None] = original_destination,
        own_addresses: Callable[[], list[str]] = host_addresses,
        may_dial: Callable[[str, EgressPolicy, frozenset[str]], bool] = dialable,
    ) -> None:
        self.policies = policies
        self.destination = destination
        self.may_dial = may_dial  # (tests and the benchmark stand the internet on loopback)
        self.own = HostAddresses(own_addresses)
        self.open_by_source: dict[str, int] = {}
        self.names = NameCache(lookup)
        self.record = record
        self.holds = Holds(policies.policy, record)
        self.listen = listen
        self.listener: socket.socket | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen; returns the port (the one asked for, or any free one when it is 0)."""
        listener = socket.create_server(self.listen, backlog=1024)
        listener.setblocking(False)
        self.listener = listener
        self.listen = (self.listen[0], int(listener.getsockname()[1]))
        self.tasks.add(asyncio.get_running_loop().create_task(self.accept_loop(listener)))
        return self.listen[1]

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.listener is not None:
            self.listener.close()

    async def accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, peer = await loop.sock_accept(listener)
            except OSError:
                await asyncio.sleep(0.05)  # EMFILE and the like: never spin
                continue
            conn.setblocking(False)
            task = loop.create_task(self.handle(conn, peer))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def handle(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        source = str(peer[0])
        count = self.open_by_source.get(source, 0)
        if count >= PER_SOURCE:
            conn.close()  # one container's flood is its own problem
            return
        self.open_by_source[source] = count + 1
        relayed = False
        try:
            relayed = await self.serve(conn, f"{peer[0]}:{peer[1]}", source)
        except (ConnectionError, TimeoutError, OSError):
            pass
        finally:
            left = self.open_by_source.get(source, 1) - 1
            if left > 0:
                self.open_by_source[source] = left
            else:
                self.open_by_source.pop(source, None)
            if not relayed:
                conn.close()

    async def serve(self, conn: socket.socket, source: str, address: str) -> bool:
        """True when the relay ran (it closed both sockets)."""
        loop = asyncio.get_running_loop()
        target = self.destination(conn)
        known = await loop.run_in_executor(None, self.policies.lookup, address)
        if known is None or target is None or target == self.listen:
            # not one of our containers, or a direct connection to the proxy's own port
            return False
        container, policy = known
        flow = Flow(container, source, target[1])
        first = await self.first_bytes(conn, flow)
        if flow.name:
            decision = policy.decide(flow.name, flow.port)
            if Holds.applies(policy, decision):
                hold_sec = policy.hold_sec
                later, flow.hold_id = await self.holds.wait(
                    container, flow.name, flow.port, hold_sec, flow.kind
                )
                policy = later or policy
                decision = (
                    later.decide(flow.name, flow.port)
                    if later
                    else not_approved(hold_sec, flow.hold_id)
                )
            flow.decision = "allowed" if decision.allowed else "denied"
            flow.reason = decision.reason
        others = wire.other_hosts(first, flow.name) if flow.kind == "http" else []
        if flow.decision == "allowed" and others:  # a second request in the first bytes
            flow.decision, flow.reason = "denied", f"a later request asked for {others[0]}"
        if flow.decision != "allowed":
            await self.refuse(conn, flow)
            return False
        upstream = await self.dial(flow, policy)
        if upstream is None:
            await self.refuse(conn, flow)
            return False
        done = loop.create_future()

        def finish() -> None:
            if not done.done():
                done.set_result(None)

        def finished() -> None:  # in the relay's last thread
            loop.call_soon_threadsafe(finish)

        relay = Relay(conn, upstream, flow, first, finished)
        try:
            relay.start()
        except RuntimeError:  # no thread to be had: refused, nothing leaks
            upstream.close()
            flow.decision, flow.reason = "failed", "the proxy is out of threads"
            self.record(flow.record())
            return False
        try:
            await done
        finally:
            self.record(flow.record())
        return True

    async def first_bytes(self, conn: socket.socket, flow: Flow) -> bytes:
        """The ClientHello or request head (whatever arrived when it is complete)."""
        loop = asyncio.get_running_loop()
        data = b""
        deadline = time.monotonic() + FIRST_BYTES_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(loop.sock_recv(conn, wire.MAX_HELLO), left)
            except TimeoutError:
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

    async def dial(self, flow: Flow, policy: EgressPolicy) -> socket.socket | None:
        loop = asyncio.get_running_loop()
        found = await self.names.addresses(flow.name)
        own = self.own.get()
        usable = [a for a in found if self.may_dial(a, policy, own)][:DIAL_TRIES]
        if not usable:
            flow.decision = "denied"
            flow.reason = (
                "resolves only to local addresses" if found else "the name does not resolve"
            )
            return None
        for address in usable:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            upstream.setblocking(False)
            try:
                await asyncio.wait_for(
                    loop.sock_connect(upstream, (address, flow.port)), CONNECT_TIMEOUT
                )
            except (OSError, TimeoutError):
                upstream.close()
                continue
            flow.address = address
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive(upstream)
            return upstream
        flow.decision = "failed"
        flow.reason = f"could not connect to {', '.join(usable[:3])} port {flow.port}"
        return None

    async def refuse(self, conn: socket.socket, flow: Flow) -> None:
        if flow.decision == "allowed":
            flow.decision = "denied"
        answer = b""
        if flow.kind == "tls":
            answer = TLS_ACCESS_DENIED
        elif flow.kind == "http":
            body = f"coi egress: {flow.name or 'this request'} is {flow.decision}: {flow.reason}\n"
            answer = (
                f"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n{body}"
            ).encode()
        if answer:
            with contextlib.suppress(OSError):
                await asyncio.wait_for(
                    asyncio.get_running_loop().sock_sendall(conn, answer), CONNECT_TIMEOUT
                )
        self.record(flow.record())


def keepalive(sock: socket.socket) -> None:
    """A peer that vanished is noticed in about two minutes (a relay holds two threads)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in KEEPALIVE:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


class Relay:
    """Both directions of one allowed connection, a thread each, blocking sockets. A
    direction that ends shuts the other side's writing (a half-close passes through); an
    error shuts both sockets, which ends the other thread too. `done` runs once, after both."""

    def __init__(
        self,
        client: socket.socket,
        upstream: socket.socket,
        flow: Flow,
        first: bytes,
        done: Callable[[], None],
    ) -> None:
        self.client, self.upstream, self.flow, self.first = client, upstream, flow, first
        self.done = done
        self.left = 2
        self.lock = threading.Lock()

    def start(self) -> None:
        """Both threads, or RuntimeError with neither left running."""
        self.client.setblocking(True)
        self.upstream.setblocking(True)
        keepalive(self.client)
        first = threading.Thread(target=self.run, args=(True,), daemon=True)
        second = threading.Thread(target=self.run, args=(False,), daemon=True)
        first.start()
        try:
            second.start()
        except RuntimeError:
            for sock in (self.client, self.upstream):  # ends the first thread
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise  # the caller closes both sockets

    def run(self, outbound: bool) -> None:
        src, dst = (self.client, self.upstream) if outbound else (self.upstream, self.client)
        try:
            if outbound:
                dst.sendall(self.first)
                self.flow.bytes_out += len(self.first)
            if outbound and self.flow.kind == "http":
                self.copy_requests(src, dst)
            else:
                self.splice(src, dst, outbound)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            for sock in (self.client, self.upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self.lock:
                self.left -= 1
                last = self.left == 0
            if last:
                self.client.close()
                self.upstream.close()
                self.done()

    def splice(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        read_end, write_end = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, CHUNK)
        try:
            while True:
                moved = os.splice(src.fileno(), write_end, CHUNK)
                if moved == 0:
                    return
                left = moved
                while left:
                    left -= os.splice(read_end, dst.fileno(), left)
                if outbound:
                    self.flow.bytes_out += moved
                else:
                    self.flow.bytes_in += moved
        finally:
            os.close(read_end)
            os.close(write_end)

    def copy_requests(self, src: socket.socket, dst: socket.socket) -> None:
        """A kept-alive HTTP connection may ask for another host in a later request."""
        tail = self.first[-HOST_TAIL:]
        while True:
            chunk = src.recv(CHUNK)
            if not chunk:
                return
            others = wire.other_hosts(tail + chunk, self.flow.name)
            if others:
                self.flow.decision = "denied"
                self.flow.reason = f"a later request asked for {others[0]}"
                raise ConnectionAbortedError
            tail = (tail + chunk)[-HOST_TAIL:]
            dst.sendall(chunk)
            self.flow.bytes_out += len(chunk)
