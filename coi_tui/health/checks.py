"""`coi health`: system, Incus, storage, network, security posture, monitoring and configuration
checks. Each check returns OK, WARN or FAIL with a message and, when not OK, the fix."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.config import Settings
from coi_tui.errors import CoiError
from coi_tui.incus import Incus, IncusError
from coi_tui.paths import coi_home

OK, WARN, FAIL = "ok", "warning", "failed"
MIN_KERNEL = (5, 15)
LOW_DISK_GB, CRITICAL_DISK_GB = 5.0, 1.0
IMAGE_MAX_AGE_DAYS = 30


@dataclass
class CheckResult:
    key: str
    section: str
    name: str
    status: str
    message: str
    fix: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "section": self.section,
            "status": self.status,
            "message": self.message,
        }
        if self.fix:
            data["fix"] = self.fix
        if self.details:
            data["details"] = self.details
        return data


class HealthChecker:
    """Runs every check once; checks that need the daemon report FAIL cleanly when it is down."""

    def __init__(self, settings: Settings, incus: Incus) -> None:
        self.settings = settings
        self.incus = incus
        self.results: list[CheckResult] = []
        self._daemon_ok = False

    def add(
        self,
        key: str,
        section: str,
        name: str,
        status: str,
        message: str,
        fix: str = "",
        **details: Any,
    ) -> None:
        self.results.append(CheckResult(key, section, name, status, message, fix, details))

    def run(self) -> list[CheckResult]:
        for check in self.checks():
            try:
                check()
            except (IncusError, OSError, CoiError) as exc:
                name = check.__name__.removeprefix("check_")
                self.add(name, "OTHER", name.replace("_", " "), FAIL, str(exc).splitlines()[0])
        return self.results

    def checks(self) -> list[Callable[[], None]]:
        system = [
            self.check_os,
            self.check_kernel,
            self.check_kernel_limits,
            self.check_coi_directory,
            self.check_disk_space,
            self.check_cgroup,
        ]
        incus = [self.check_incus, self.check_socket_permissions, self.check_id_delegation]
        needs_daemon = [
            self.check_image,
            self.check_image_age,
            self.check_storage_pool,
            self.check_root_disk,
            self.check_bridge,
            self.check_nat,
            self.check_privileged_profiles,
            self.check_privileged_instances,
            self.check_idmapped_mounts,
            self.check_orphans,
        ]
        rest = [
            self.check_ip_forward,
            self.check_nftables,
            self.check_seccomp,
            self.check_apparmor,
            self.check_proc_connector,
            self.check_kernel_log,
            self.check_audit_directory,
            self.check_config,
        ]
        return [*system, *incus, *[self._daemon_gate(c) for c in needs_daemon], *rest]

    def _daemon_gate(self, check: Callable[[], None]) -> Callable[[], None]:
        def gated() -> None:
            if not self._daemon_ok:
                name = check.__name__.removeprefix("check_")
                self.add(
                    name,
                    SECTIONS.get(name, "OTHER"),
                    name.replace("_", " "),
                    FAIL,
                    "not checked: the Incus daemon is not reachable",
                    "start Incus first (see the 'incus' check)",
                )
                return
            check()

        gated.__name__ = check.__name__
        return gated

    # ------------------------------------------------------------------ system
    def check_os(self) -> None:
        pretty = "unknown"
        release = Path("/etc/os-release")
        if release.exists():
            for line in release.read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    pretty = line.split("=", 1)[1].strip('"')
        self.add("os", "SYSTEM", "Operating system", OK, f"{pretty} ({platform.machine()})")

    def check_kernel(self) -> None:
        release = platform.release()
        version = kernel_version(release)
        if version >= MIN_KERNEL:
            self.add("kernel_version", "SYSTEM", "Kernel", OK, release)
        else:
            self.add(
                "kernel_version",
                "SYSTEM",
                "Kernel",
                WARN,
                f"{release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}: idmapped mounts "
                "and some isolation features may be missing",
                "upgrade to a kernel >= 5.15",
            )

    def check_kernel_limits(self) -> None:
        from coi_tui.incus.provision import low_sysctls

        low = low_sysctls()
        if low:
            self.add(
                "kernel_limits",
                "SYSTEM",
                "Kernel limits",
                WARN,
                "too low for many containers: "
                + ", ".join(f"{k}={v}" for k, v in low.items())
                + " (containers die in boot with 'Too many open files')",
                "sudo coi setup",
            )
        else:
            self.add(
                "kernel_limits",
                "SYSTEM",
                "Kernel limits",
                OK,
                "inotify, keys and map-count limits suit many containers",
            )

    def check_coi_directory(self) -> None:
        home = coi_home()
        home.mkdir(parents=True, exist_ok=True)
        if os.access(home, os.W_OK):
            self.add("coi_directory", "STORAGE", "coi directory", OK, f"{home} is writable")
        else:
            self.add(
                "coi_directory",
                "STORAGE",
                "coi directory",
                FAIL,
                f"{home} is not writable",
                f"fix the ownership of {home}",
            )

    def check_disk_space(self) -> None:
        worst: tuple[float, str] | None = None
        for path in (coi_home(), Path("/var/lib/incus")):
            if path.exists():
                free = shutil.disk_usage(path).free / 1e9
                if worst is None or free < worst[0]:
                    worst = (free, str(path))
        if worst is None:
            self.add("disk_space", "STORAGE", "Disk space", WARN, "nothing to measure")
            return
        free, where = worst
        status = OK if free >= LOW_DISK_GB else WARN if free >= CRITICAL_DISK_GB else FAIL
        fix = "" if status == OK else "free disk space (old images: 'coi image list --all')"
        self.add(
            "disk_space", "STORAGE", "Disk space", status, f"{free:.1f} GB free on {where}", fix
        )

    def check_cgroup(self) -> None:
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        unified = Path("/sys/fs/cgroup/unified/cgroup.controllers")
        if v2.exists() or unified.exists():
            source = v2 if v2.exists() else unified
            controllers = source.read_text().split()
            self.add("cgroup", "SYSTEM", "cgroups", OK, "cgroup v2: " + " ".join(controllers))
        else:
            self.add(
                "cgroup",
                "SYSTEM",
                "cgroups",
                WARN,
                "no cgroup v2 hierarchy: limits and per-container accounting are degraded",
                "boot with cgroup v2 enabled",
            )

    # ------------------------------------------------------------------ incus
    def check_incus(self) -> None:
        try:
            version = self.incus.ping()
        except IncusError as exc:
            self.add(
                "incus",
                "INCUS",
                "Incus daemon",
                FAIL,
                str(exc).split(":")[0],
                "start Incus: 'sudo systemctl start incus', or 'sudo scripts/start-incus.sh' "
                "where there is no systemd (make setup does it)",
            )
            return
        self._daemon_ok = True
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        status = OK if major_minor >= (6, 0) else WARN
        self.add(
            "incus",
            "INCUS",
            "Incus daemon",
            status,
            f"version {version} on {self.incus.socket_path}",
            "" if status == OK else "upgrade Incus to 6.0 LTS or newer",
        )

    def check_socket_permissions(self) -> None:
        path = self.incus.socket_path
        if not os.path.exists(path):
            self.add(
                "permissions",
                "INCUS",
                "Socket permissions",
                FAIL,
                f"{path} does not exist",
                "start the Incus daemon",
            )
        elif os.access(path, os.R_OK | os.W_OK):
            self.add("permissions", "INCUS", "Socket permissions", OK, f"{path} is usable")
        else:
            self.add(
                "permissions",
                "INCUS",
                "Socket permissions",
                FAIL,
                f"no access to {path}",
                "sudo usermod -aG incus-admin $USER, then log in again",
            )

    def check_id_delegation(self) -> None:
        from coi_tui.incus.provision import subid_allows

        uid = os.getuid()
        if uid in (0, self.settings.code_uid):
            self.add(
                "id_mapping",
                "SECURITY",
                "Workspace id mapping",
                OK,
                "root: raw.idmap needs no delegation"
                if uid == 0
                else "uid matches the agent's: idmapped mounts (shift)",
            )
        elif subid_allows(uid, "/etc/subuid") and subid_allows(os.getgid(), "/etc/subgid"):
            self.add(
                "id_mapping",
                "SECURITY",
                "Workspace id mapping",
                OK,
                f"uid {uid} may be mapped (raw.idmap)",
            )
        else:
            self.add(
                "id_mapping",
                "SECURITY",
                "Workspace id mapping",
                FAIL,
                f"uid {uid} is not delegated to Incus in /etc/subuid and /etc/subgid",
                "sudo coi setup --user $USER",
            )

    def check_image(self) -> None:
        alias = self.settings.image
        if not self.incus.image_exists(alias):
            self.add(
                "image",
                "INCUS",
                "Default image",
                FAIL,
                f"image '{alias}' not found",
                "run 'coi build'",
            )
            return
        image = self.incus.get_image(alias)
        self.add(
            "image",
            "INCUS",
            "Default image",
            OK,
            f"{alias} ({image.fingerprint[:12]}, {image.size / 1e6:.0f} MB)",
        )

    def check_image_age(self) -> None:
        alias = self.settings.image
        if not self.incus.image_exists(alias):
            self.add(
                "image_age", "INCUS", "Image freshness", WARN, "no image to age", "run 'coi build'"
            )
            return
        from coi_tui.images.build import RECIPE_PROPERTY, recipe_hash

        image = self.incus.get_image(alias)
        created = parse_time(image.created_at or image.uploaded_at)
        age = (datetime.now(UTC) - created).days if created else 0
        stale_recipe = (
            RECIPE_PROPERTY in image.properties
            and image.properties[RECIPE_PROPERTY] != recipe_hash()
        )
        if stale_recipe:
            self.add(
                "image_age",
                "INCUS",
                "Image freshness",
                WARN,
                "the image was built from an older recipe",
                "run 'coi build'",
            )
        elif age > IMAGE_MAX_AGE_DAYS:
            self.add(
                "image_age",
                "INCUS",
                "Image freshness",
                WARN,
                f"built {age} days ago (security updates)",
                "run 'coi build --force'",
            )
        else:
            self.add("image_age", "INCUS", "Image freshness", OK, f"built {age} day(s) ago")

    # ------------------------------------------------------------------ storage
    def _coi_pool(self) -> str:
        if self.settings.storage_pool:
            return self.settings.storage_pool
        pools = {p["name"] for p in self.incus.list_storage_pools()}
        if "coi" in pools:
            return "coi"
        root = (self.incus.get_profile("default").get("devices") or {}).get("root") or {}
        return str(root.get("pool", ""))

    def check_storage_pool(self) -> None:
        name = self._coi_pool()
        pools = {p["name"]: p for p in self.incus.list_storage_pools()}
        if not name or name not in pools:
            self.add(
                "incus_storage_pool",
                "STORAGE",
                "Storage pool",
                FAIL,
                "no storage pool for coi containers",
                "sudo coi setup",
            )
            return
        driver = pools[name].get("driver", "?")
        usage = self.incus.request("GET", f"/1.0/storage-pools/{name}/resources")
        space = usage.get("space") or {}
        total, used = int(space.get("total") or 0), int(space.get("used") or 0)
        free_gb = (total - used) / 1e9 if total else 0.0
        percent = 100 * used / total if total else 0.0
        message = f"'{name}' ({driver}), {free_gb:.1f} GB free, {percent:.0f}% used"
        if total and (free_gb < 2 or percent > 90):
            self.add(
                "incus_storage_pool",
                "STORAGE",
                "Storage pool",
                FAIL,
                message,
                "free space in the pool ('coi clean', 'coi image list --all')",
            )
        elif driver == "dir":
            self.add(
                "incus_storage_pool",
                "STORAGE",
                "Storage pool",
                WARN,
                message + ": the dir driver re-unpacks the image on every launch (~3 s)",
                "use a btrfs pool: 'sudo coi setup' creates one when btrfs-progs is installed",
            )
        elif total and (free_gb < 5 or percent > 80):
            self.add(
                "incus_storage_pool",
                "STORAGE",
                "Storage pool",
                WARN,
                message,
                "free space in the pool",
            )
        else:
            self.add("incus_storage_pool", "STORAGE", "Storage pool", OK, message, driver=driver)

    def check_root_disk(self) -> None:
        devices = self.incus.get_profile("default").get("devices") or {}
        if "root" in devices:
            self.add(
                "root_disk",
                "STORAGE",
                "Default profile root disk",
                OK,
                f"on pool '{devices['root'].get('pool')}'",
            )
        else:
            self.add(
                "root_disk",
                "STORAGE",
                "Default profile root disk",
                WARN,
                "the default profile has no root disk (coi adds one per container)",
                "sudo coi setup",
            )

    # ------------------------------------------------------------------ network
    def check_bridge(self) -> None:
        network = self.incus.get_network(self.settings.bridge)
        if network is None:
            self.add(
                "network_bridge",
                "NETWORKING",
                "Bridge",
                FAIL,
                f"bridge '{self.settings.bridge}' not found",
                "sudo coi setup",
            )
            return
        cidr = (network.get("config") or {}).get("ipv4.address", "?")
        self.add("network_bridge", "NETWORKING", "Bridge", OK, f"{self.settings.bridge} {cidr}")

    def check_nat(self) -> None:
        network = self.incus.get_network(self.settings.bridge) or {}
        nat = (network.get("config") or {}).get("ipv4.nat") == "true"
        if nat:
            self.add(
                "nat",
                "NETWORKING",
                "Internet access (NAT)",
                OK,
                "NAT on: agents can reach the internet (within the network mode's rules)",
            )
        else:
            self.add(
                "nat",
                "NETWORKING",
                "Internet access (NAT)",
                WARN,
                "NAT off: agents cannot reach their APIs",
                "sudo coi setup --nat",
            )

    def check_ip_forward(self) -> None:
        value = read_text("/proc/sys/net/ipv4/ip_forward").strip()
        if value == "1":
            self.add("ip_forwarding", "NETWORKING", "IPv4 forwarding", OK, "enabled")
        else:
            self.add(
                "ip_forwarding",
                "NETWORKING",
                "IPv4 forwarding",
                WARN,
                "disabled: containers cannot reach beyond the host",
                "sudo sysctl -w net.ipv4.ip_forward=1",
            )

    def check_nftables(self) -> None:
        nft = shutil.which("nft")
        if not nft:
            self.add(
                "nftables",
                "NETWORKING",
                "nftables",
                FAIL,
                "nft not installed: restricted and allowlist modes cannot work",
                "sudo apt-get install nftables",
            )
            return
        if os.geteuid() == 0:
            done = subprocess.run([nft, "list", "tables"], capture_output=True, text=True)
            if done.returncode != 0:
                self.add(
                    "nftables",
                    "NETWORKING",
                    "nftables",
                    FAIL,
                    f"nft cannot list tables: {done.stderr.strip()[:80]}",
                    "load the nf_tables kernel module",
                )
                return
        self.add("nftables", "NETWORKING", "nftables", OK, f"{nft} usable")

    # ------------------------------------------------------------------ security posture
    def check_privileged_profiles(self) -> None:
        profiles = self.incus.request("GET", "/1.0/profiles", params={"recursion": 1}) or []
        bad = [
            p["name"]
            for p in profiles
            if str((p.get("config") or {}).get("security.privileged", "")).lower() == "true"
        ]
        if bad:
            self.add(
                "privileged_profile",
                "SECURITY",
                "Privileged profiles",
                FAIL,
                f"security.privileged=true in profile(s): {', '.join(bad)}",
                " ; ".join(f"incus profile unset {p} security.privileged" for p in bad),
            )
        else:
            self.add(
                "privileged_profile",
                "SECURITY",
                "Privileged profiles",
                OK,
                f"none of {len(profiles)} profile(s) is privileged",
            )

    def check_privileged_instances(self) -> None:
        prefix = self.settings.container_prefix
        bad = [
            i.name
            for i in self.incus.list_instances(prefix)
            if i.expanded_config.get("security.privileged", "").lower() == "true"
        ]
        if bad:
            self.add(
                "privileged_instances",
                "SECURITY",
                "Privileged containers",
                FAIL,
                f"privileged coi container(s): {', '.join(bad)}",
                " ; ".join(f"incus config unset {n} security.privileged" for n in bad),
            )
        else:
            self.add(
                "privileged_instances",
                "SECURITY",
                "Privileged containers",
                OK,
                "every coi container is unprivileged",
            )

    def check_idmapped_mounts(self) -> None:
        features = (self.incus.server_info.get("environment") or {}).get("kernel_features") or {}
        if str(features.get("idmapped_mounts", "")).lower() == "true":
            self.add("idmapped_mounts", "SECURITY", "Idmapped mounts", OK, "supported")
        else:
            self.add(
                "idmapped_mounts",
                "SECURITY",
                "Idmapped mounts",
                WARN,
                "not supported: only raw.idmap can give workspace files the right owner",
                "use a kernel >= 5.15",
            )

    def check_seccomp(self) -> None:
        status = read_text("/proc/self/status")
        mode = next(
            (line.split()[1] for line in status.splitlines() if line.startswith("Seccomp:")), ""
        )
        if mode:
            self.add(
                "seccomp",
                "SECURITY",
                "Seccomp",
                OK,
                "available (Incus applies its default syscall filter to every container)",
            )
        else:
            self.add(
                "seccomp",
                "SECURITY",
                "Seccomp",
                FAIL,
                "the kernel has no seccomp",
                "use a kernel built with CONFIG_SECCOMP",
            )

    def check_apparmor(self) -> None:
        enabled = read_text("/sys/module/apparmor/parameters/enabled").strip()
        if enabled == "Y":
            self.add("apparmor", "SECURITY", "AppArmor", OK, "enabled")
        else:
            self.add(
                "apparmor",
                "SECURITY",
                "AppArmor",
                WARN,
                "not enabled: containers rely on user namespaces and seccomp alone",
                "enable AppArmor (apparmor=1 security=apparmor on the kernel command line)",
            )

    # ------------------------------------------------------------------ monitoring
    def check_proc_connector(self) -> None:
        netlink_connector = 11
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netlink_connector)
            sock.bind((os.getpid(), 1))  # CN_IDX_PROC group
            sock.close()
            self.add(
                "proc_connector", "MONITORING", "Process events", OK, "proc connector available"
            )
        except OSError as exc:
            self.add(
                "proc_connector",
                "MONITORING",
                "Process events",
                WARN,
                f"proc connector unavailable ({exc.strerror}): the monitor falls back "
                "to /proc polling",
                "run the monitor as root (coi setup installs it)",
            )

    def check_kernel_log(self) -> None:
        if os.access("/dev/kmsg", os.R_OK):
            self.add("kernel_log", "MONITORING", "Kernel log", OK, "/dev/kmsg readable")
        else:
            self.add(
                "kernel_log",
                "MONITORING",
                "Kernel log",
                WARN,
                "/dev/kmsg not readable: network events come only through the privileged monitor",
                "run the monitor as root (coi setup installs it)",
            )

    def check_audit_directory(self) -> None:
        audit = coi_home() / "audit"
        audit.mkdir(parents=True, exist_ok=True)
        status = OK if os.access(audit, os.W_OK) else FAIL
        self.add(
            "audit_log_directory",
            "MONITORING",
            "Audit log directory",
            status,
            f"{audit} {'is writable' if status == OK else 'is not writable'}",
            "" if status == OK else f"fix the ownership of {audit}",
        )

    # ------------------------------------------------------------------ configuration
    def check_config(self) -> None:
        from coi_tui.config.settings import config_files, load_settings

        loaded = [str(p) for p in config_files(Path.cwd()) if p.is_file()]
        try:
            load_settings()
        except CoiError as exc:
            self.add(
                "config",
                "CONFIGURATION",
                "Configuration",
                FAIL,
                str(exc),
                "fix the file named above",
            )
            return
        self.add(
            "config",
            "CONFIGURATION",
            "Configuration",
            OK,
            "valid: " + (", ".join(loaded) if loaded else "built-in defaults"),
            network_mode=self.settings.network_mode,
            tool=self.settings.tool,
        )

    def check_orphans(self) -> None:
        prefix = self.settings.container_prefix
        stopped = [
            i.name
            for i in self.incus.list_instances(prefix)
            if i.status == "Stopped"
            and i.config.get("user.coi.persistent") != "true"
            and i.config.get("user.coi.managed") == "true"
        ]
        if stopped:
            self.add(
                "orphaned_resources",
                "STATUS",
                "Orphaned containers",
                WARN,
                f"{len(stopped)} stopped ephemeral container(s): {', '.join(stopped[:5])}",
                "coi clean",
            )
        else:
            self.add("orphaned_resources", "STATUS", "Orphaned containers", OK, "none")


SECTIONS = {
    "image": "INCUS",
    "image_age": "INCUS",
    "incus_storage_pool": "STORAGE",
    "storage_pool": "STORAGE",
    "root_disk": "STORAGE",
    "bridge": "NETWORKING",
    "nat": "NETWORKING",
    "privileged_profiles": "SECURITY",
    "privileged_instances": "SECURITY",
    "idmapped_mounts": "SECURITY",
    "orphans": "STATUS",
}
SECTION_ORDER = [
    "SYSTEM",
    "INCUS",
    "STORAGE",
    "NETWORKING",
    "SECURITY",
    "MONITORING",
    "CONFIGURATION",
    "STATUS",
    "OTHER",
]


def kernel_version(release: str) -> tuple[int, int]:
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


def read_text(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def parse_time(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
    except ValueError:
        return None


def overall(results: list[CheckResult]) -> str:
    if any(r.status == FAIL for r in results):
        return "unhealthy"
    if any(r.status == WARN for r in results):
        return "degraded"
    return "healthy"
