"""`coi setup`: prepare an Incus daemon for coi, idempotently.

Storage pool (btrfs on a loop file when possible, else the default profile's pool, else `dir`),
the default profile's root disk, and a bridge for coi containers with NAT off unless asked.
Every step reports whether it changed something or left it alone.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
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


def dhcp_range(address: str) -> str:
    """DHCP leases in the lower part of the bridge's subnet (of a /24: .2-.199); the rest is
    for hosts added by hand, so a lease never takes their address."""
    network = ipaddress.ip_network(address, strict=False)
    hosts = list(network.hosts())
    end = hosts[min(len(hosts) - 1, max(1, len(hosts) * 78 // 100))]
    return f"{hosts[1]}-{end}"


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
                "ipv4.dhcp.ranges": dhcp_range(address),
            }
            self.incus.create_network(name, config, description="coi containers")
            state = "on" if nat else "off"
            self._step("bridge network", True, f"'{name}' {address}, NAT {state}")
            return
        config = network.get("config") or {}
        if not config.get("ipv4.dhcp.ranges") and "/" in config.get("ipv4.address", ""):
            # Leave the top of the subnet to hosts added by hand (and the tests' own hosts).
            self.incus.update_network(
                name, {"ipv4.dhcp.ranges": dhcp_range(config["ipv4.address"])}
            )
            self._step("bridge DHCP", True, f"'{name}' leases {dhcp_range(config['ipv4.address'])}")
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

    def ensure_kernel_limits(self) -> None:
        if os.geteuid() != 0:
            low = low_sysctls()
            if low:
                self._step(
                    "kernel limits",
                    False,
                    "too low for many containers ("
                    + ", ".join(f"{k}={v}" for k, v in low.items())
                    + "): run 'sudo coi setup'",
                )
            return
        changed = raise_sysctls()
        self._step(
            "kernel limits",
            bool(changed),
            "raised " + ", ".join(changed)
            if changed
            else "inotify, keys and map count limits are high enough",
        )

    def run(self, pool: str, bridge: str, nat: bool | None, subnet: str | None = None) -> str:
        version = self.incus.ping()
        self._step("incus daemon", False, f"version {version} on {self.incus.socket_path}")
        self.ensure_kernel_limits()
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


# ---------------------------------------------------------------------- kernel limits
# What Incus's production-setup guide recommends: every container's systemd takes inotify
# instances, and the default of 128 runs out after a dozen containers ("Failed to allocate
# manager object: Too many open files" as the container's PID 1 dies in boot).
SYSCTL_MINIMUMS = {
    "fs.inotify.max_user_instances": 1048576,
    "fs.inotify.max_user_watches": 1048576,
    "fs.inotify.max_queued_events": 1048576,
    "kernel.keys.maxkeys": 2000,
    "vm.max_map_count": 262144,
}
SYSCTL_FILE = Path("/etc/sysctl.d/60-coi.conf")


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def read_sysctl(key: str) -> int | None:
    try:
        return int(sysctl_path(key).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def low_sysctls() -> dict[str, int]:
    """Kernel limits below what many containers need: {key: current value}."""
    low = {}
    for key, minimum in SYSCTL_MINIMUMS.items():
        value = read_sysctl(key)
        if value is not None and value < minimum:
            low[key] = value
    return low


def raise_sysctls() -> list[str]:
    """Raise (never lower) the limits now and for the next boot; needs root."""
    changed = []
    for key, old in low_sysctls().items():
        sysctl_path(key).write_text(str(SYSCTL_MINIMUMS[key]))
        changed.append(f"{key} {old} -> {SYSCTL_MINIMUMS[key]}")
    if changed or not SYSCTL_FILE.exists():
        lines = ["# Written by 'coi setup': limits for running many system containers."]
        lines += [f"{key} = {value}" for key, value in SYSCTL_MINIMUMS.items()]
        # /etc may be read-only (a container?): the live values are what matter.
        with contextlib.suppress(OSError):
            SYSCTL_FILE.write_text("\n".join(lines) + "\n")
    return changed
