"""Allowlist name resolution on the host, with TTLs (the stdlib resolver hides them).

A minimal DNS client: one A query over UDP per name to the host's nameservers, CNAME chains
followed inside the answer. `COI_NETWORK_RESOLVER=IP[:PORT]` picks the server instead of
/etc/resolv.conf (tests point it at a DNS they run; TODO(config owner): a [network] key).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.network.netctl import (
    NetctlError,
    check_ports,
    public_host,  # what an allowlist may open: one list
)

MIN_REFRESH = 60  # seconds: never re-resolve more often, whatever the TTLs say


@dataclass
class Resolved:
    addresses: dict[str, list[str]]  # entry -> public IPv4 addresses
    min_ttl: int | None  # None: nothing had a TTL (only literal addresses)
    failed: list[str]
    private: list[str] = field(default_factory=list)  # names that resolved into the LAN

    def cidrs(self) -> list[str]:
        """Addresses open on every port: those of entries without `:ports`."""
        return sorted({a for e, addrs in self.addresses.items() if ":" not in e for a in addrs})

    def port_hosts(self) -> list[tuple[str, list[str]]]:
        """(address, ports) of entries with `:ports` (COI: they apply per destination)."""
        found: dict[str, list[str]] = {}
        for entry, addrs in self.addresses.items():
            if ":" in entry:
                ports = split_ports(entry)[1]
                for address in addrs:
                    found.setdefault(address, [])
                    found[address] += [p for p in ports if p not in found[address]]
        return sorted(found.items())


def nameservers() -> list[tuple[str, int]]:
    override = os.environ.get("COI_NETWORK_RESOLVER", "")
    if override:
        host, _, port = override.partition(":")
        return [(host, int(port or 53))]
    found = []
    try:
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "nameserver":
                try:
                    if ipaddress.ip_address(words[1]).version == 4:
                        found.append((words[1], 53))
                except ValueError:
                    continue
    except OSError:
        pass
    return found


def split_ports(entry: str) -> tuple[str, list[str]]:
    """ "name:443,8000-8100" -> ("name", ["443", "8000-8100"]); no suffix: all ports ([])."""
    host, colon, ports = entry.partition(":")
    if not colon:
        return entry, []
    try:
        return host, [p for part in ports.split(",") for p in check_ports(part)]
    except NetctlError:
        raise CoiError(
            f"[network] allowed_domains: bad ports in {entry!r} (1-65535, as 443, 80,443 or "
            "8000-8100)"
        ) from None


def check_entry(entry: str) -> str:
    entry = entry.strip().lower()
    host, ports = split_ports(entry)
    entry = host.rstrip(".") + (":" + ",".join(ports) if ports else "")
    if "*" in entry:
        raise CoiError(f"[network] allowed_domains: wildcards are not supported: {entry!r}")
    if not entry:
        raise CoiError("[network] allowed_domains: empty entry")
    return entry


def is_address(entry: str) -> bool:
    try:
        ipaddress.IPv4Network(entry, strict=False)
    except ValueError:
        return False
    return True


def literal(entry: str) -> str | None:
    """An IPv4 address needs no resolution; it must be a public host. A network is refused:
    "0.0.0.0/0" or "192.168.0.0/16" would turn the allowlist into the LAN."""
    try:
        net = ipaddress.IPv4Network(entry, strict=False)
    except ValueError:
        return None
    if net.prefixlen != 32:
        raise CoiError(
            f"[network] allowed_domains: {entry!r} is a network; list single hosts or names"
        )
    address = str(net.network_address)
    if not public_host(address):
        raise CoiError(
            f"[network] allowed_domains: {address} is not a public address; open a private "
            "host with [[network.hosts]] in your own config"
        )
    return address


def build_query(name: str, ident: int) -> bytes:
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)  # RD set, one question
    labels = b"".join(bytes([len(p)]) + p.encode("idna") for p in name.split(".") if p)
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)  # A, IN


def _skip_name(data: bytes, pos: int) -> int:
    while True:
        length = data[pos]
        if length & 0xC0 == 0xC0:
            return pos + 2
        if length == 0:
            return pos + 1
        pos += 1 + length


def parse_answer(data: bytes, ident: int) -> tuple[list[str], int | None]:
    """A records and the smallest TTL of the answer section (CNAMEs included)."""
    got, flags, qd, an = struct.unpack("!HHHH", data[:8])
    if got != ident or not flags & 0x8000:
        raise ValueError("not our answer")
    rcode = flags & 0xF
    if rcode not in (0, 3):
        raise ValueError(f"server error {rcode}")
    pos = 12
    for _ in range(qd):
        pos = _skip_name(data, pos) + 4
    addresses, ttl = [], None
    for _ in range(an):
        pos = _skip_name(data, pos)
        rtype, rclass, rttl, length = struct.unpack("!HHIH", data[pos : pos + 10])
        pos += 10
        if rclass == 1 and rtype in (1, 5):
            ttl = rttl if ttl is None else min(ttl, rttl)
            if rtype == 1 and length == 4:
                addresses.append(socket.inet_ntoa(data[pos : pos + 4]))
        pos += length
    return addresses, ttl


def query_a(name: str, timeout: float = 2.0) -> tuple[list[str], int | None]:
    servers = nameservers()
    if not servers:
        raise OSError("no nameserver configured on the host")
    last: Exception = OSError("no answer")
    for server in servers:
        ident = secrets.randbelow(0x10000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.sendto(build_query(name, ident), server)
                while True:
                    data, peer = sock.recvfrom(4096)
                    if peer[0] == server[0]:
                        return parse_answer(data, ident)
            except (OSError, ValueError, struct.error, IndexError) as exc:
                last = exc
    raise OSError(str(last))


def resolve(entries: list[str]) -> Resolved:
    result = Resolved({}, None, [])
    for raw in entries:
        entry = check_entry(raw)
        host = split_ports(entry)[0]
        fixed = literal(host)
        if fixed is not None:
            result.addresses[entry] = [fixed]
            continue
        try:
            addresses, ttl = query_a(host)
        except OSError:
            result.failed.append(entry)
            continue
        public = sorted({a for a in addresses if public_host(a)})
        if len(public) < len(set(addresses)):
            result.private.append(entry)  # a name that points into the LAN opens nothing there
        if not public:
            result.failed.append(entry)
            continue
        result.addresses[entry] = public
        if ttl is not None:
            result.min_ttl = ttl if result.min_ttl is None else min(result.min_ttl, ttl)
    return result


def refresh_seconds(min_ttl: int | None, interval_minutes: int) -> float | None:
    """Seconds until the next refresh: the smallest TTL, at least MIN_REFRESH, capped at
    refresh_interval_minutes; None when refreshing is off (interval 0)."""
    if interval_minutes <= 0:
        return None
    cap = interval_minutes * 60
    if min_ttl is None:
        return float(cap)
    return float(min(cap, max(MIN_REFRESH, min_ttl)))


def hosts_block(resolved: Resolved) -> str:
    lines = ["# coi allowlist begin (managed by coi: names resolved on the host)"]
    named: dict[str, list[str]] = {}
    for entry, addresses in resolved.addresses.items():
        host = split_ports(entry)[0]
        if not is_address(host):
            named.setdefault(host, [])
            named[host] += [a for a in addresses if a not in named[host]]
    for host, addresses in sorted(named.items()):
        lines += [f"{address}\t{host}" for address in addresses]
    lines.append("# coi allowlist end")
    return "\n".join(lines) + "\n"


def merge_hosts(current: str, block: str) -> str:
    """Replace coi's block in an /etc/hosts text, keeping everything else."""
    kept, skipping = [], False
    for line in current.splitlines():
        if line.startswith("# coi allowlist begin"):
            skipping = True
            continue
        if skipping:
            skipping = not line.startswith("# coi allowlist end")
            continue
        kept.append(line)
    text = "\n".join(kept).rstrip("\n")
    return (text + "\n" if text else "") + block
