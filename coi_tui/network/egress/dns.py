"""The proxied containers' only DNS (coi-netctl redirects every query on port 53 to it): it
answers A queries for names the container's policy lets it reach, with public addresses the
host resolved, and NXDOMAIN for the rest; every query is logged. Other query types get an
empty answer: TXT, NULL and the like are the wide channels of DNS tunnels, HTTPS/SVCB records
would hand out ECH configurations (the outer SNI then no longer names the site) and IPv6 is
blocked anyway. It never forwards a query: a name outside the policy never leaves the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from coi_tui.network.egress.holds import Holds, not_approved
from coi_tui.network.egress.policy import EgressPolicy
from coi_tui.network.egress.proxy import dialable

A, AAAA = 1, 28
TYPES = {1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 10: "NULL", 12: "PTR", 15: "MX", 16: "TXT"}
TYPES |= {28: "AAAA", 33: "SRV", 64: "SVCB", 65: "HTTPS", 255: "ANY"}
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5
ANSWER_TTL = 30
MAX_QUERY = 512
IN_FLIGHT = 64  # queries (and TCP connections) of one container being answered at once


@dataclass(frozen=True)
class Query:
    ident: int
    flags: int
    name: str  # lower-case, no trailing dot; "" for the root
    qtype: int
    question: bytes  # the question section as sent (echoed in the answer)


def parse_query(data: bytes) -> Query | None:
    """One standard query with one question; None for anything else."""
    if len(data) < 12 or len(data) > MAX_QUERY:
        return None
    ident, flags, qdcount = struct.unpack("!HHH", data[:6])
    if flags & 0x8000 or (flags >> 11) & 0xF != 0 or qdcount != 1:
        return None  # a response, not a standard QUERY, or not one question
    labels, pos = [], 12
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length > 63 or pos + 1 + length > len(data):
            return None  # compression is not allowed in a question
        label = data[pos + 1 : pos + 1 + length]
        if not all(0x21 <= c <= 0x7E for c in label):
            return None
        labels.append(label.decode("ascii").lower())
        pos += 1 + length
    if pos + 4 > len(data):
        return None
    qtype, qclass = struct.unpack("!HH", data[pos : pos + 4])
    if qclass != 1:
        return None
    return Query(ident, flags, ".".join(labels), qtype, data[12 : pos + 4])


def reply(query: Query, rcode: int, addresses: list[str] | None = None) -> bytes:
    addresses = addresses or []
    flags = 0x8000 | (query.flags & 0x0100) | 0x0080 | rcode  # QR, RD echoed, RA
    head = struct.pack("!HHHHHH", query.ident, flags, 1, len(addresses), 0, 0)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, A, 1, ANSWER_TTL, 4) + socket.inet_aton(a) for a in addresses
    )
    return head + query.question + answers


class Resolver:
    """Answers for `policies` (source address -> container, policy) with `addresses` (the
    proxy's host-side name cache); `record` gets one dict per query."""

    def __init__(
        self,
        policies: Any,
        addresses: Callable[[str], Any],
        record: Callable[[dict[str, Any]], None],
        holds: Holds | None = None,  # the proxy's: one hold per name for both
        own: Callable[[], frozenset[str]] = frozenset,  # this host's addresses, never answered
    ) -> None:
        self.policies = policies
        self.addresses = addresses
        self.record = record
        self.holds = holds or Holds(policies.policy, record)
        self.own = own
        self.in_flight: dict[str, int] = {}  # per source: queries being answered

    async def answer(self, data: bytes, source: str) -> bytes | None:
        query = parse_query(data)
        if query is None:
            return None
        loop = asyncio.get_running_loop()
        known = await loop.run_in_executor(None, self.policies.lookup, source)
        if known is None:
            return reply(query, REFUSED)
        container, policy = known
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "container": container,
            "type": "dns",
            "domain": query.name,
            "qtype": TYPES.get(query.qtype, str(query.qtype)),
            "source": source,
        }
        answer, entry["decision"], entry["reason"] = await self.decide(
            query, policy, container, entry
        )
        entry["answers"] = answer[1]
        self.record(entry)
        return reply(query, answer[0], answer[1])

    async def decide(
        self, query: Query, policy: EgressPolicy, container: str, entry: dict[str, Any]
    ) -> tuple[tuple[int, list[str]], str, str]:
        decision = policy.resolvable(query.name)
        if Holds.applies(policy, decision):
            hold_sec = policy.hold_sec
            later, entry["hold_id"] = await self.holds.wait(
                container, query.name, 53, hold_sec, "dns"
            )
            policy = later or policy
            decision = (
                later.resolvable(query.name) if later else not_approved(hold_sec, entry["hold_id"])
            )
        if not decision.allowed:
            return (NXDOMAIN, []), "denied", decision.reason
        if query.qtype != A:
            return (NOERROR, []), "allowed", "only A records are answered"
        found = await self.addresses(query.name)
        own = self.own()
        usable = [a for a in found if dialable(a, policy, own)]
        if not usable:
            reason = "resolves only to local addresses" if found else "the name does not resolve"
            return (NXDOMAIN, []), "denied", reason
        return (NOERROR, usable[:8]), "allowed", decision.reason


class UdpServer(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver) -> None:
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        flight = self.resolver.in_flight
        if flight.get(addr[0], 0) >= IN_FLIGHT:
            return  # a flood from one container: dropped, as a busy server would
        flight[addr[0]] = flight.get(addr[0], 0) + 1
        task = asyncio.get_running_loop().create_task(self.respond(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def respond(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            answer = await self.resolver.answer(data, addr[0])
        finally:
            flight = self.resolver.in_flight
            flight[addr[0]] = flight.get(addr[0], 1) - 1
            if flight[addr[0]] <= 0:
                del flight[addr[0]]
        if answer is not None and self.transport is not None:
            with contextlib.suppress(OSError):
                self.transport.sendto(answer, addr)


async def serve_tcp(resolver: Resolver, reader: asyncio.StreamReader, writer: Any) -> None:
    peer = writer.get_extra_info("peername") or ("", 0)
    source = str(peer[0])
    flight = resolver.in_flight
    if flight.get(source, 0) >= IN_FLIGHT:
        writer.close()
        return
    flight[source] = flight.get(source, 0) + 1
    try:
        while True:
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 10))[0]
            query = await asyncio.wait_for(reader.readexactly(size), 10)
            answer = await resolver.answer(query, source)
            if answer is None:
                break
            writer.write(struct.pack("!H", len(answer)) + answer)
            await writer.drain()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, struct.error):
        pass
    finally:
        flight[source] = flight.get(source, 1) - 1
        if flight[source] <= 0:
            del flight[source]
        writer.close()


async def start_resolver(resolver: Resolver, address: str, port: int) -> tuple[int, list[Any]]:
    """UDP and TCP on one port (any free one when `port` is 0). Returns the port and the
    objects to close."""
    loop = asyncio.get_running_loop()
    for attempt in range(20):
        udp, _ = await loop.create_datagram_endpoint(
            lambda: UdpServer(resolver), local_addr=(address, port)
        )
        bound = int(udp.get_extra_info("sockname")[1])
        try:
            tcp = await asyncio.start_server(
                lambda r, w: serve_tcp(resolver, r, w), address, bound, reuse_address=True
            )
        except OSError:
            udp.close()
            if port or attempt == 19:
                raise
            continue  # the TCP port of that number is taken: another free UDP port
        return bound, [udp, tcp]
    raise OSError("no free port for the resolver")
