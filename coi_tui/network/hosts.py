"""Extra hosts a session may reach on purpose: `[[network.hosts]]` in the config and, at run
time, `coi hosts add`. Each entry is an IPv4 address, its names (written to the container's
/etc/hosts) and optionally ports; the firewall opens exactly that address (and ports), even a
private one in restricted mode. Runtime entries live in ~/.coi/hosts/<container>.json and end
with the session."""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home
from coi_tui.network import netctl

HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
BEGIN = "# coi hosts begin (managed by coi: [[network.hosts]] and 'coi hosts')"
END = "# coi hosts end"


@dataclass
class HostEntry:
    ip: str
    hostnames: list[str]
    ports: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.ip}\t{' '.join(self.hostnames)}"


def check_ports(values: Any) -> list[str]:
    """Ports as the firewall takes them: ints or "80", "80,443", "8000-8100" strings. The
    grammar is netctl's, which the root helper applies again to what it is given."""
    items = values if isinstance(values, list) else [values]
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            try:
                out += netctl.check_ports(part)
            except netctl.NetctlError:
                raise CoiError(f"bad port {part.strip()!r}: ports are numbers 1-65535") from None
    return out


def make_entry(ip: str, hostnames: list[str], ports: Any = ()) -> HostEntry:
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise CoiError(f"bad host address {ip!r}: an IPv4 address") from None
    if address.is_unspecified or address.is_multicast or address.is_loopback:
        raise CoiError(f"host address {ip} cannot be opened")
    if not hostnames:
        raise CoiError(f"host {ip} needs at least one hostname")
    for name in hostnames:
        if not HOSTNAME_RE.match(name):
            raise CoiError(f"bad hostname {name!r}")
    return HostEntry(str(address), list(hostnames), check_ports(list(ports)) if ports else [])


def config_hosts(settings: Any) -> list[HostEntry]:
    """[[network.hosts]] entries (ip, hostnames, ports) from the settings."""
    raw = getattr(settings, "network_hosts", None) or []
    entries = []
    for item in raw:
        data = (
            item
            if isinstance(item, dict)
            else asdict(item)
            if hasattr(item, "__dataclass_fields__")
            else {}
        )
        names = data.get("hostnames") or ([data["hostname"]] if data.get("hostname") else [])
        entries.append(make_entry(str(data.get("ip", "")), list(names), data.get("ports") or []))
    return entries


def store_path(container: str) -> Path:
    return coi_home() / "hosts" / f"{container}.json"


def runtime_hosts(container: str) -> list[HostEntry]:
    try:
        data = json.loads(store_path(container).read_text())
    except (OSError, ValueError):
        return []
    return [HostEntry(d["ip"], list(d["hostnames"]), list(d.get("ports", []))) for d in data]


def save_runtime_hosts(container: str, entries: list[HostEntry]) -> None:
    path = store_path(container)
    if not entries:
        path.unlink(missing_ok=True)
        return
    atomic_write(path, json.dumps([asdict(e) for e in entries], indent=1), 0o644)


def all_hosts(settings: Any, container: str) -> list[HostEntry]:
    return [*config_hosts(settings), *runtime_hosts(container)]


def firewall_hosts(entries: list[HostEntry]) -> list[tuple[str, list[str]]]:
    """One (ip, ports) per address: the union of its ports, or [] (every port) when any entry
    for it names none."""
    every_port = {e.ip for e in entries if not e.ports}
    merged: dict[str, list[str]] = {}
    for entry in entries:
        ports = merged.setdefault(entry.ip, [])
        if entry.ip not in every_port:
            ports.extend(p for p in entry.ports if p not in ports)
    return sorted(merged.items())


def hosts_text_block(entries: list[HostEntry]) -> str:
    return "\n".join([BEGIN, *(e.line() for e in entries), END]) + "\n"


def merge_hosts_file(current: str, entries: list[HostEntry]) -> str:
    """Replace coi's hosts block in an /etc/hosts text, keeping everything else."""
    kept, skipping = [], False
    for line in current.splitlines():
        if line == BEGIN:
            skipping = True
            continue
        if skipping:
            skipping = line != END
            continue
        kept.append(line)
    text = "\n".join(kept).rstrip("\n") + "\n"
    return text + hosts_text_block(entries) if entries else text
