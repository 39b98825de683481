"""coi-netctl: the one privileged path of coi's network isolation.

`coi setup` installs this file, unchanged, as the root-owned /usr/local/libexec/coi-netctl and a
sudoers rule that lets the incus-admin group run exactly that file. It is self-contained (stdlib
only, run with `python3 -I`, so no user-controlled module or environment variable reaches it) and
it builds every rule itself from strictly validated arguments: callers never pass nft syntax, and
it only ever touches coi's own table `bridge coi`.

    coi-netctl apply IFACE MODE GATEWAY [--allow-local] [--no-block-private]
                     [--no-block-metadata] [--allow CIDR]... [--proxy PORT:PORTS]
                     [--resolver PORT]
    coi-netctl remove IFACE
    coi-netctl list        # one host-side interface per line
    coi-netctl check       # exit 0 when nftables can hold coi's table

Layout: base chain `guard` (hook bridge prerouting) sends frames from each container's host-side
veth (`iifname`) to its own chain `c-IFACE` through the verdict map `ports`; frames from any
`coiv*` port without rules are dropped, so a container is blocked until its rules exist. The
bridge family is used because only there `iifname` is the container's port (in the ip family it
is the bridge), which is what makes rules immune to address reuse and spoofing.

With `--proxy PORT:PORTS` (the user's egress proxy listens on the gateway's PORT) TCP to the
destination PORTS is marked MARK_BASE|PORT instead of judged by address, and QUIC is dropped
(browsers fall back to TCP); with `--resolver PORT` every DNS query (UDP and TCP port 53, to
any address) is marked for the user's resolver on the gateway. The bridge family has no NAT,
so a second table `ip coi` does the rest: its `divert` chain redirects marked connections to
the port the mark names (map `proxy`), and its `fence` chain drops any marked packet that
would be forwarded instead: a proxy that is down, or a mark with no port in the map, fails
closed.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import TypedDict

TABLE = "bridge coi"
IFACE_PREFIX = "coiv"
IFACE_RE = re.compile(r"^coiv[0-9a-f]{10}$")
MODES = ("restricted", "allowlist", "open")
MAX_ALLOW = 4096
IP_TABLE = "ip coi"
MARK_BASE = 0x0C010000  # | the proxy's port: a proxied connection
MARK_MASK = 0xFFFF0000
LOCK_PATH = "/run/coi-netctl.lock"
# Private and other local ranges (RFC1918, CGNAT, benchmark).
PRIVATE = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15")
METADATA = "169.254.0.0/16"
# Never routable from a container: this host, "this network", multicast, reserved.
SPECIAL = ("0.0.0.0/8", "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4")


class NetctlError(Exception):
    pass


def nft_binary() -> str:
    for path in ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"):
        if os.access(path, os.X_OK):
            return path
    found = shutil.which("nft")
    if not found:
        raise NetctlError("nft (nftables) is not installed")
    return found


def nft(script: str | None = None, *args: str) -> str:
    argv = [nft_binary(), *args] if script is None else [nft_binary(), "-f", "-"]
    proc = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        first = (proc.stderr.strip().splitlines() or ["failed"])[0]
        raise NetctlError(f"nft: {first}")
    return proc.stdout


def check_iface(iface: str) -> str:
    if not IFACE_RE.match(iface):
        raise NetctlError(f"bad interface name {iface!r} (want coiv + 10 hex digits)")
    return iface


def check_ipv4(text: str) -> str:
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise NetctlError(f"bad IPv4 address {text!r}") from None


def check_cidr(text: str) -> str:
    try:
        net = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise NetctlError(f"bad IPv4 address or network {text!r}") from None
    return str(net.network_address) if net.prefixlen == 32 else str(net)


def check_public_host(text: str) -> str:
    """An allowlist entry: one public IPv4 address (public_host). A network, or an address
    in a range the rules drop, is refused: an allowlist must never be a way onto the LAN or
    the cloud metadata service ([[network.hosts]] opens a private host on purpose, through
    --host)."""
    address = check_cidr(text)
    if "/" in address:
        raise NetctlError(f"--allow {text}: single hosts only, not networks")
    if not public_host(address):
        raise NetctlError(f"--allow {text}: not a public address")
    return address


def public_host(address: str) -> bool:
    """Outside every range the rules drop: private, shared, benchmark, link-local
    (metadata), loopback, "this network", multicast and reserved."""
    ip = ipaddress.IPv4Address(address)
    return not any(ip in ipaddress.IPv4Network(net) for net in (*PRIVATE, METADATA, *SPECIAL))


def host_addresses() -> list[str]:
    """This host's own IPv4 addresses: routed-to-self traffic is 'local network' too."""
    try:
        out = subprocess.run(
            ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=False
        ).stdout
        data = json.loads(out or "[]")
    except (OSError, ValueError):
        return []
    found = set()
    for link in data:
        for addr in link.get("addr_info", []):
            if addr.get("family") == "inet" and addr.get("local"):
                found.add(addr["local"])
    return sorted(found)


def elements(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def port_match(ports: Sequence[str]) -> str:
    return ports[0] if len(ports) == 1 else elements(ports)


def capped(prefix: str, ports: Sequence[str]) -> list[str]:
    """`prefix accept`, limited to the destination ports when a cap is set."""
    if not ports:
        return [f"{prefix} accept" if prefix else "accept"]
    match = port_match(ports)
    lead = f"{prefix} " if prefix else ""
    return [f"{lead}tcp dport {match} accept", f"{lead}udp dport {match} accept"]


def container_rules(
    mode: str,
    gateway: str,
    *,
    allow_local: bool = False,
    block_private: bool = True,
    block_metadata: bool = True,
    host_addrs: Sequence[str] = (),
    set_name: str = "",
    hosts: Sequence[tuple[str, Sequence[str]]] = (),
    dns_servers: Sequence[str] = (),
    allowed_ports: Sequence[str] = (),
    proxy: tuple[int, Sequence[str]] | None = None,
    resolver: int = 0,
) -> list[str]:
    """The body of one container's chain, first match wins. `hosts` are (ip, ports) opened
    on purpose ([[network.hosts]], `coi hosts`), even private ones in restricted mode;
    `dns_servers` are the only off-box resolvers (restricted); `allowed_ports` caps the
    destination ports of everything else that is allowed (ICMP echo stays allowed); `proxy`
    (port, destination ports): TCP to those ports goes to the egress proxy, after every
    drop of a local address and before anything is allowed by address; `resolver`: every
    DNS query goes to coi's resolver on that port, before any other DNS rule."""
    if mode == "open":
        return ["accept"]
    rules = [
        "ether type arp accept",  # ARP spoofing is stopped by Incus' mac/ipv4 filtering
        "ether type != ip drop",  # IPv6 and every other protocol
        # DHCP (discover is a broadcast from 0.0.0.0) keeps the lease alive.
        f"ip daddr {{ {gateway}, 255.255.255.255 }} udp sport 68 udp dport 67 accept",
    ]
    if resolver:
        rules += [f"{proto} dport 53 meta mark set {MARK_BASE | resolver:#010x} accept"
                  for proto in ("udp", "tcp")]  # fmt: skip
    elif mode == "restricted":
        rules += [
            f"ip daddr {gateway} udp dport 53 accept",
            f"ip daddr {gateway} tcp dport 53 accept",
        ]
    # Replies to connections the host opens to the container (no conntrack in the bridge
    # family): anything TCP but a connection attempt.
    rules.append(f"ip daddr {gateway} tcp flags & (syn | ack) != syn accept")
    for address, ports in hosts:
        rules += capped(f"ip daddr {address}", ports)
    if mode == "restricted" and dns_servers:
        for proto in ("udp", "tcp"):
            rules.append(f"ip daddr {elements(dns_servers)} {proto} dport 53 accept")
            rules.append(f"{proto} dport 53 drop")
    local = list(PRIVATE)
    if allow_local:
        rules += capped(f"ip daddr {elements(local)}", allowed_ports)
    else:
        rules.append(f"ip daddr {gateway} drop")
        others = [a for a in host_addrs if a != gateway]
        if others:
            rules.append(f"ip daddr {elements(others)} drop")
    diverted = []
    if proxy is not None:
        port, ports = proxy
        diverted = [
            f"tcp dport {port_match(ports)} meta mark set {MARK_BASE | port:#010x} accept",
            "udp dport 443 drop",  # QUIC: no name can be read from it; clients fall back
        ]
    if mode == "allowlist":
        # Before the allowed set: whatever it holds, it never opens the LAN or metadata.
        if not allow_local:
            rules.append(f"ip daddr {elements([*local, METADATA, *SPECIAL])} drop")
        rules += diverted
        if allowed_ports:
            rules += capped(f"ip daddr @{set_name}", allowed_ports)
        else:
            rules.append(f"ip daddr @{set_name} meta l4proto {{ tcp, udp }} accept")
        rules.append(f"ip daddr @{set_name} icmp type echo-request limit rate 10/second accept")
        rules.append("drop")
        return rules
    if block_private and not allow_local:
        rules.append(f"ip daddr {elements(local)} drop")
    if block_metadata:
        rules.append(f"ip daddr {METADATA} drop")
    rules.append(f"ip daddr {elements(SPECIAL)} drop")
    rules += diverted
    if allowed_ports:
        rules += ["icmp type echo-request accept", *capped("", allowed_ports), "drop"]
    else:
        rules.append("accept")
    return rules


def base_script() -> list[str]:
    return [
        f"add table {TABLE}",
        f"add map {TABLE} ports {{ type ifname : verdict ; }}",
        f"add chain {TABLE} guard "
        "{ type filter hook prerouting priority -150 ; policy accept ; }",
        f"flush chain {TABLE} guard",
        f"add rule {TABLE} guard iifname vmap @ports",
        f'add rule {TABLE} guard iifname "{IFACE_PREFIX}*" drop',
    ]


def divert_script(ports: Sequence[int]) -> list[str]:
    """The `ip coi` table (see the module docstring) with the map entries for `ports`."""
    marked = f"meta mark & {MARK_MASK:#010x} == {MARK_BASE:#010x}"
    return [
        f"add table {IP_TABLE}",
        f"add map {IP_TABLE} proxy {{ type mark : inet_service ; }}",
        f"add chain {IP_TABLE} divert "
        "{ type nat hook prerouting priority dstnat - 5 ; policy accept ; }",
        f"flush chain {IP_TABLE} divert",
        f"add rule {IP_TABLE} divert meta l4proto {{ tcp, udp }} {marked} "
        "redirect to :meta mark map @proxy",
        f"add chain {IP_TABLE} fence {{ type filter hook forward priority -5 ; policy accept ; }}",
        f"flush chain {IP_TABLE} fence",
        f"add rule {IP_TABLE} fence {marked} drop",
        *(f"add element {IP_TABLE} proxy {{ {MARK_BASE | p:#010x} : {p} }}" for p in ports),
    ]


def bridge_fence_script() -> list[str]:
    """A marked frame the bridge would pass to another port (a bridge with an uplink) never
    leaves: only delivery to the host, where `ip coi` redirects it, is allowed."""
    marked = f"meta mark & {MARK_MASK:#010x} == {MARK_BASE:#010x}"
    return [
        f"add chain {TABLE} fence {{ type filter hook forward priority 0 ; policy accept ; }}",
        f"flush chain {TABLE} fence",
        f"add rule {TABLE} fence {marked} drop",
    ]


def apply_script(
    iface: str, rules: list[str], allowed: Sequence[str], diverted: Sequence[int] = ()
) -> str:
    chain, aset = f"c-{iface}", f"a-{iface}"
    lines = [
        *base_script(),
        *([*divert_script(diverted), *bridge_fence_script()] if diverted else []),
        f"add chain {TABLE} {chain}",
        f"flush chain {TABLE} {chain}",
        f"add set {TABLE} {aset} {{ type ipv4_addr ; flags interval ; auto-merge ; }}",
        f"flush set {TABLE} {aset}",
    ]
    if allowed:
        lines.append(f"add element {TABLE} {aset} {elements(allowed)}")
    lines += [f"add rule {TABLE} {chain} {rule}" for rule in rules]
    lines.append(f'add element {TABLE} ports {{ "{iface}" : jump {chain} }}')
    return "\n".join(lines) + "\n"


def table_state() -> dict[str, set[str]]:
    """{'chains': ..., 'sets': ..., 'ports': ...} of coi's table; empty when it is absent."""
    state: dict[str, set[str]] = {"chains": set(), "sets": set(), "ports": set(), "ip": set()}
    with contextlib.suppress(NetctlError):
        nft(None, "list", "table", *IP_TABLE.split())
        state["ip"].add(IP_TABLE)
    try:
        data = json.loads(nft(None, "-j", "list", "table", *TABLE.split()))
    except NetctlError:
        return state
    for item in data.get("nftables", []):
        if "chain" in item:
            state["chains"].add(item["chain"]["name"])
        elif "set" in item:
            state["sets"].add(item["set"]["name"])
        elif "map" in item and item["map"]["name"] == "ports":
            for elem in item["map"].get("elem", []):
                key = elem[0] if isinstance(elem, list) else elem
                if isinstance(key, str):
                    state["ports"].add(key)
    return state


def remove_script(iface: str, state: dict[str, set[str]]) -> str:
    chain, aset = f"c-{iface}", f"a-{iface}"
    lines = []
    if iface in state["ports"]:
        lines.append(f'delete element {TABLE} ports {{ "{iface}" }}')
    if chain in state["chains"]:
        lines.append(f"delete chain {TABLE} {chain}")
    if aset in state["sets"]:
        lines.append(f"delete set {TABLE} {aset}")
    left = {c for c in state["chains"] if c.startswith("c-")} - {chain}
    if not left and state["chains"]:
        lines = [f"delete table {TABLE}"]  # the last container: leave nothing behind
    if not left and state["ip"]:
        lines.append(f"delete table {IP_TABLE}")
    return "\n".join(lines) + ("\n" if lines else "")


def interfaces(state: dict[str, set[str]]) -> list[str]:
    found = {c[2:] for c in state["chains"] if c.startswith("c-")} | state["ports"]
    found |= {s[2:] for s in state["sets"] if s.startswith("a-")}
    return sorted(i for i in found if IFACE_RE.match(i))


def check_ports(text: str) -> list[str]:
    """ "443", "80,443" or "8000-8100": nft port expressions, each 1-65535."""
    out = []
    for part in text.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            numbers = [int(low)] + ([int(high)] if dash else [])
        except ValueError:
            raise NetctlError(f"bad port list {text!r}") from None
        if any(not 1 <= n <= 65535 for n in numbers) or (dash and numbers[0] > numbers[1]):
            raise NetctlError(f"bad port list {text!r} (ports are 1-65535)")
        out.append("-".join(str(n) for n in numbers))
    if not out:
        raise NetctlError("empty port list")
    return out


class RuleFlags(TypedDict):
    """container_rules' keyword arguments, as parsed from the command line."""

    allow_local: bool
    block_private: bool
    block_metadata: bool
    hosts: list[tuple[str, list[str]]]
    dns_servers: list[str]
    allowed_ports: list[str]
    proxy: tuple[int, list[str]] | None
    resolver: int


def check_listen_port(text: str, option: str) -> int:
    if not text.isdigit() or not 1024 <= int(text) <= 65535:
        raise NetctlError(f"bad {option} {text!r} (a port 1024-65535)")
    return int(text)


def parse_proxy(text: str) -> tuple[int, list[str]]:
    """ "PORT:PORTS": the proxy's listening port and the destination ports sent to it."""
    port_text, colon, ports = text.partition(":")
    if not colon:
        raise NetctlError(f"bad --proxy {text!r} (want PORT:PORTS)")
    return check_listen_port(port_text, "--proxy"), check_ports(ports)


def parse_apply(argv: list[str]) -> tuple[str, str, str, RuleFlags, list[str]]:
    if len(argv) < 3:
        raise NetctlError("usage: coi-netctl apply IFACE MODE GATEWAY [options]")
    iface, mode, gateway = check_iface(argv[0]), argv[1], check_ipv4(argv[2])
    if mode not in MODES:
        raise NetctlError(f"bad mode {mode!r} (want {', '.join(MODES)})")
    allow_local, block_private, block_metadata = False, True, True
    allowed: list[str] = []
    hosts: list[tuple[str, list[str]]] = []
    dns: list[str] = []
    ports: list[str] = []
    proxy: tuple[int, list[str]] | None = None
    resolver = 0
    rest = argv[3:]
    while rest:
        word = rest.pop(0)
        if word == "--allow-local":
            allow_local = True
        elif word == "--no-block-private":
            block_private = False
        elif word == "--no-block-metadata":
            block_metadata = False
        elif word == "--allow" and rest:
            allowed.append(check_public_host(rest.pop(0)))
        elif word == "--host" and rest:  # IP or IP:PORTS
            address, _, spec = rest.pop(0).partition(":")
            hosts.append((check_ipv4(address), check_ports(spec) if spec else []))
        elif word == "--dns" and rest:
            dns.append(check_ipv4(rest.pop(0)))
        elif word == "--ports" and rest:
            ports += check_ports(rest.pop(0))
        elif word == "--proxy" and rest and proxy is None:
            proxy = parse_proxy(rest.pop(0))
        elif word == "--resolver" and rest and not resolver:
            resolver = check_listen_port(rest.pop(0), "--resolver")
        else:
            raise NetctlError(f"unknown option {word!r}")
    if len(allowed) + len(hosts) + len(dns) > MAX_ALLOW:
        raise NetctlError(f"too many --allow/--host/--dns entries (at most {MAX_ALLOW})")
    if (proxy is not None or resolver) and mode == "open":
        raise NetctlError("--proxy and --resolver are for restricted and allowlist mode")
    if resolver and dns:
        raise NetctlError("--dns and --resolver exclude each other")
    if dns and mode != "restricted":
        raise NetctlError("--dns is for restricted mode (allowlist blocks DNS entirely)")
    if mode == "allowlist":
        for address, _ in hosts:
            ip = ipaddress.IPv4Address(address)
            if ip.is_private or ip.is_link_local:
                raise NetctlError(
                    f"--host {address}: allowlist mode refuses private and metadata addresses"
                )
    flags = RuleFlags(
        allow_local=allow_local,
        block_private=block_private,
        block_metadata=block_metadata,
        hosts=hosts,
        dns_servers=sorted(set(dns)),
        allowed_ports=sorted(set(ports)),
        proxy=proxy,
        resolver=resolver,
    )
    return iface, mode, gateway, flags, sorted(set(allowed))


def locked() -> int:
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def run(argv: list[str]) -> str:
    """Do one command; returns what to print. Raises NetctlError."""
    if not argv:
        raise NetctlError("usage: coi-netctl apply|remove|list|check ...")
    if os.geteuid() != 0:
        raise NetctlError("must run as root (via sudo)")
    command, args = argv[0], argv[1:]
    fd = locked()
    try:
        if command == "apply":
            iface, mode, gateway, flags, allowed = parse_apply(args)
            rules = container_rules(
                mode, gateway, host_addrs=host_addresses(), set_name=f"a-{iface}", **flags
            )
            diverted = [flags["proxy"][0]] if flags["proxy"] else []
            diverted += [flags["resolver"]] if flags["resolver"] else []
            nft(apply_script(iface, rules, allowed if mode == "allowlist" else [], diverted))
            return ""
        if command == "remove":
            if len(args) != 1:
                raise NetctlError("usage: coi-netctl remove IFACE")
            script = remove_script(check_iface(args[0]), table_state())
            if script:
                nft(script)
            return ""
        if command == "list" and not args:
            return "".join(f"{i}\n" for i in interfaces(table_state()))
        if command == "check" and not args:
            # A dry run of the real base table proves the kernel accepts what we need.
            proc = subprocess.run(
                [nft_binary(), "-c", "-f", "-"],
                input="\n".join([*base_script()[:3], *divert_script([1024])[:7]]) + "\n",
                capture_output=True,
                text=True,
                check=False,
            )
            if proc.returncode != 0:
                first = (proc.stderr.strip().splitlines() or ["failed"])[0]
                raise NetctlError(f"nftables unusable: {first}")
            return ""
        raise NetctlError(f"unknown command {command!r}")
    finally:
        os.close(fd)


def main(argv: list[str] | None = None) -> int:
    try:
        sys.stdout.write(run(list(sys.argv[1:] if argv is None else argv)))
    except NetctlError as exc:
        print(f"coi-netctl: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
