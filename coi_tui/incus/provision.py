"""`coi setup`: prepare an Incus daemon for coi, idempotently.

Storage pool (btrfs on a loop file when possible, else the default profile's pool, else `dir`),
the default profile's root disk, and a bridge for coi containers with NAT off unless asked.
Every step reports whether it changed something or left it alone.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from coi_tui.incus.client import Incus
from coi_tui.incus.errors import IncusError


@dataclass(frozen=True)
class Step:
    what: str
    changed: bool
    detail: str

    def line(self) -> str:
        mark = "created" if self.changed else "ok"
        return f"  [{mark:>7}] {self.what}: {self.detail}"


def used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Networks already routed on this host (so our bridge never shadows one)."""
    found: list[ipaddress.IPv4Network] = []
    try:
        out = subprocess.run(
            ["ip", "-4", "route", "show", "table", "all"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    except FileNotFoundError:
        return found
    for line in out.splitlines():
        word = line.split()[0] if line.split() else ""
        if word in ("default", "local", "broadcast", "unreachable", "blackhole", "prohibit"):
            word = line.split()[1] if len(line.split()) > 1 else ""
        try:
            found.append(ipaddress.ip_network(word, strict=False))  # type: ignore[arg-type]
        except ValueError:
            continue
    return [n for n in found if isinstance(n, ipaddress.IPv4Network) and n.prefixlen > 0]


def pick_bridge_subnet(taken: list[ipaddress.IPv4Network]) -> str:
    """A free 10.x.y.1/24 (the range incus admin init fails to find on our machines)."""
    for second in (199, 198, 197, 123, 87):
        for third in range(0, 256, 7):
            candidate = ipaddress.ip_network(f"10.{second}.{third}.0/24")
            if not any(candidate.overlaps(net) for net in taken):
                return f"10.{second}.{third}.1/24"
    raise IncusError("no free 10.x.y.0/24 subnet for the coi bridge: pass --subnet CIDR")


class Provisioner:
    def __init__(self, incus: Incus, report: Callable[[Step], None] = lambda s: None) -> None:
        self.incus = incus
        self.report = report
        self.steps: list[Step] = []

    def _step(self, what: str, changed: bool, detail: str) -> None:
        step = Step(what, changed, detail)
        self.steps.append(step)
        self.report(step)

    # ------------------------------------------------------------------ storage
    def ensure_pool(self, name: str, size: str = "15GiB") -> str:
        """Return the pool coi containers use, creating one when needed."""
        pools = {p["name"]: p for p in self.incus.list_storage_pools()}
        if name in pools:
            self._step("storage pool", False, f"'{name}' ({pools[name]['driver']}) already exists")
            return name
        if shutil.which("mkfs.btrfs"):
            try:
                self.incus.create_storage_pool(name, "btrfs", {"size": size})
                self._step("storage pool", True, f"'{name}' btrfs on a {size} loop file")
                return name
            except IncusError as exc:
                btrfs_error = str(exc)
        else:
            btrfs_error = "mkfs.btrfs not installed (apt install btrfs-progs)"
        profile_pool = self._profile_root_pool()
        if profile_pool and profile_pool in pools:
            self._step(
                "storage pool",
                False,
                f"reusing the default profile's pool '{profile_pool}' "
                f"(btrfs failed: {btrfs_error})",
            )
            return profile_pool
        self.incus.create_storage_pool(name, "dir", {})
        self._step(
            "storage pool",
            True,
            f"'{name}' with the dir driver (slow launches; btrfs failed: {btrfs_error})",
        )
        return name

    def _profile_root_pool(self) -> str:
        root = (self.incus.get_profile("default").get("devices") or {}).get("root") or {}
        return str(root.get("pool", ""))

    def ensure_root_disk(self, pool: str) -> None:
        profile = self.incus.get_profile("default")
        devices = dict(profile.get("devices") or {})
        if "root" in devices:
            self._step(
                "default profile root disk", False, f"on pool '{devices['root'].get('pool')}'"
            )
            return
        devices["root"] = {"type": "disk", "path": "/", "pool": pool}
        self.incus.update_profile("default", {**profile, "devices": devices})
        self._step("default profile root disk", True, f"added on pool '{pool}'")

    # ------------------------------------------------------------------ network
    def ensure_bridge(self, name: str, nat: bool | None, subnet: str | None = None) -> None:
        """Create the bridge (NAT off unless nat=True); nat=None leaves an existing one alone."""
        network = self.incus.get_network(name)
        if network is None:
            address = subnet or pick_bridge_subnet(used_ipv4_networks())
            config = {
                "ipv4.address": address,
                "ipv4.nat": "true" if nat else "false",
                "ipv6.address": "none",
            }
            self.incus.create_network(name, config, description="coi containers")
            state = "on" if nat else "off"
            self._step("bridge network", True, f"'{name}' {address}, NAT {state}")
            return
        config = network.get("config") or {}
        current = config.get("ipv4.nat", "false") == "true"
        if nat is not None and nat != current:
            self.incus.update_network(name, {"ipv4.nat": "true" if nat else "false"})
            self._step("bridge network", True, f"'{name}' NAT turned {'on' if nat else 'off'}")
            return
        self._step(
            "bridge network",
            False,
            f"'{name}' {config.get('ipv4.address', '?')}, NAT {'on' if current else 'off'}",
        )

    def run(self, pool: str, bridge: str, nat: bool | None, subnet: str | None = None) -> str:
        version = self.incus.ping()
        self._step("incus daemon", False, f"version {version} on {self.incus.socket_path}")
        chosen = self.ensure_pool(pool)
        self.ensure_root_disk(chosen)
        self.ensure_bridge(bridge, nat, subnet)
        return chosen


# ---------------------------------------------------------------------- id delegation
SUBID_FILES = ("/etc/subuid", "/etc/subgid")


def subid_allows(host_id: int, path: str, owner: str = "root") -> bool:
    """Whether `owner` may map `host_id` (an `owner:start:count` line covers it)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:
        return False
    for line in lines:
        parts = line.strip().split(":")
        if len(parts) != 3 or parts[0] != owner:
            continue
        try:
            start, count = int(parts[1]), int(parts[2])
        except ValueError:
            continue
        if start <= host_id < start + count:
            return True
    return False


def delegate_host_ids(uid: int, gid: int) -> list[str]:
    """Let Incus map this user's uid/gid into containers (raw.idmap needs `root:<id>:1` in
    /etc/subuid and /etc/subgid). Returns the lines added; needs root."""
    added: list[str] = []
    for path, host_id in zip(SUBID_FILES, (uid, gid), strict=True):
        if subid_allows(host_id, path):
            continue
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"root:{host_id}:1\n")
        added.append(f"{path}: root:{host_id}:1")
    return added
