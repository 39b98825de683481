"""`coi health`: system, Incus, security posture, networking, monitoring, storage,
configuration and status checks. Each check returns OK, WARN or FAIL with a message and, when
not OK, the fix. `fixes()` lists the safe repairs `coi health --fix` may apply.

Checks only look: none of them creates, changes or deletes anything (that is `--fix`'s job).
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.config import Settings
from coi_tui.config.settings import config_files, load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.paths import coi_home, sessions_dir
from coi_tui.images.build import RECIPE_PROPERTY, recipe_hash
from coi_tui.incus import Incus, IncusError
from coi_tui.incus.errors import SocketPermissionDenied
from coi_tui.incus.provision import Provisioner, low_sysctls, raise_sysctls, subid_allows
from coi_tui.monitor.control import LAUNCHER
from coi_tui.monitor.pidfile import running_pid
from coi_tui.network.egress.service import running_proxy
from coi_tui.network.firewall import HELPER_PATH, Firewall, install_helper
from coi_tui.network.isolation import clean_orphans, orphan_interfaces
from coi_tui.sessions.host_hook import host_timezone, valid_zone
from coi_tui.sessions.manager import SessionManager
from coi_tui.sessions.store import all_saved_sessions
from coi_tui.tools import TOOLS, get_tool

OK, WARN, FAIL = "ok", "warning", "failed"
MIN_KERNEL = (5, 15)
LOW_DISK_GB, CRITICAL_DISK_GB = 5.0, 1.0
IMAGE_MAX_AGE_DAYS = 30
NAT_HINT = "sudo coi setup --nat"
ORPHAN_RECHECK_SEC = 2.0

# key -> (section, label). The order here is the order of the text report.
CHECKS: dict[str, tuple[str, str]] = {
    "os": ("SYSTEM", "Operating system"),
    "kernel_version": ("SYSTEM", "Kernel version"),
    "timezone": ("SYSTEM", "Timezone"),
    "kernel_limits": ("SYSTEM", "Kernel limits"),
    "incus": ("CRITICAL", "Incus"),
    "permissions": ("CRITICAL", "Permissions"),
    "id_mapping": ("CRITICAL", "Id mapping"),
    "image": ("CRITICAL", "Default image"),
    "image_age": ("CRITICAL", "Image age"),
    "privileged_profile": ("CRITICAL", "Privileged check"),
    "privileged_instances": ("CRITICAL", "Privileged instances"),
    "security_posture": ("CRITICAL", "Security posture"),
    "idmapped_mounts": ("CRITICAL", "Idmapped mounts"),
    "network_bridge": ("NETWORKING", "Network bridge"),
    "ip_forwarding": ("NETWORKING", "IP forwarding"),
    "firewall": ("NETWORKING", "Firewall"),
    "egress": ("NETWORKING", "Egress filter"),
    "nftables": ("MONITORING", "nftables"),
    "proc_connector": ("MONITORING", "Process events"),
    "kernel_log": ("MONITORING", "Kernel log"),
    "monitoring_configuration": ("MONITORING", "Monitoring config"),
    "audit_log_directory": ("MONITORING", "Audit log dir"),
    "cgroup_availability": ("MONITORING", "cgroup v2"),
    "coi_directory": ("STORAGE", "COI directory"),
    "sessions_directory": ("STORAGE", "Sessions dir"),
    "disk_space": ("STORAGE", "Disk space"),
    "incus_storage_pool": ("STORAGE", "Incus storage pool"),
    "root_disk": ("STORAGE", "Profile root disk"),
    "config": ("CONFIGURATION", "Config loaded"),
    "network_mode": ("CONFIGURATION", "Network mode"),
    "tool": ("CONFIGURATION", "Tool"),
    "active_containers": ("STATUS", "Containers"),
    "saved_sessions": ("STATUS", "Saved sessions"),
    "orphaned_resources": ("STATUS", "Orphaned resources"),
    "dns_resolution": ("OPTIONAL", "DNS resolution"),
    "passwordless_sudo": ("OPTIONAL", "Passwordless sudo"),
    "process_monitoring": ("OPTIONAL", "Process monitoring"),
}
VERBOSE_ONLY = ("dns_resolution", "passwordless_sudo", "process_monitoring")
SECTION_ORDER = [
    "SYSTEM",
    "CRITICAL",
    "NETWORKING",
    "MONITORING",
    "STORAGE",
    "CONFIGURATION",
    "STATUS",
    "OPTIONAL",
    "OTHER",
]


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
        """COI's shape: name (the key), status, message, details ({} when empty). The fix,
        when there is one, is details["fix"]."""
        details = dict(self.details)
        if self.fix and self.status != OK:
            details["fix"] = self.fix
        return {
            "name": self.key,
            "status": self.status,
            "message": self.message,
            "details": details,
        }


@dataclass
class Fix:
    """A safe repair for a check that is not OK: `describe` says what it would do, `apply`
    does it and returns what it did."""

    key: str
    describe: str
    apply: Callable[[], str]


class HealthChecker:
    """Runs every check once; checks that need the daemon report FAIL cleanly when it is down."""

    def __init__(self, settings: Settings, incus: Incus, verbose: bool = False) -> None:
        self.settings = settings
        self.incus = incus
        self.verbose = verbose
        self.results: list[CheckResult] = []
        self._daemon_ok = False

    def add(self, key: str, status: str, message: str, fix: str = "", **details: Any) -> None:
        section, label = CHECKS.get(key, ("OTHER", key.replace("_", " ")))
        self.results.append(CheckResult(key, section, label, status, message, fix, details))

    def run(self) -> list[CheckResult]:
        for check in self.checks():
            try:
                check()
            except (IncusError, OSError, CoiError) as exc:
                key = check.__name__.removeprefix("check_")
                self.add(key, FAIL, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        order = list(CHECKS)
        self.results.sort(key=lambda r: order.index(r.key) if r.key in order else len(order))
        return self.results

    def result(self, key: str) -> CheckResult | None:
        return next((r for r in self.results if r.key == key), None)

    def checks(self) -> list[Callable[[], None]]:
        local = [
            self.check_os,
            self.check_kernel_version,
            self.check_timezone,
            self.check_kernel_limits,
            self.check_incus,
            self.check_permissions,
            self.check_id_mapping,
            self.check_ip_forwarding,
            self.check_nftables,
            self.check_proc_connector,
            self.check_kernel_log,
            self.check_monitoring_configuration,
            self.check_audit_log_directory,
            self.check_cgroup_availability,
            self.check_coi_directory,
            self.check_sessions_directory,
            self.check_disk_space,
            self.check_config,
            self.check_network_mode,
            self.check_egress,
            self.check_tool,
            self.check_saved_sessions,
        ]
        needs_daemon = [
            self.check_image,
            self.check_image_age,
            self.check_privileged_profile,
            self.check_privileged_instances,
            self.check_security_posture,
            self.check_idmapped_mounts,
            self.check_network_bridge,
            self.check_firewall,
            self.check_incus_storage_pool,
            self.check_root_disk,
            self.check_active_containers,
            self.check_orphaned_resources,
        ]
        verbose = [self.check_dns_resolution, self.check_passwordless_sudo]
        verbose_daemon = [self.check_process_monitoring]
        out = [*local, *[self._daemon_gate(c) for c in needs_daemon]]
        if self.verbose:
            out += [*verbose, *[self._daemon_gate(c) for c in verbose_daemon]]
        return out

    def _daemon_gate(self, check: Callable[[], None]) -> Callable[[], None]:
        def gated() -> None:
            if not self._daemon_ok:
                self.add(
                    check.__name__.removeprefix("check_"),
                    FAIL,
                    "not checked: Incus is not reachable",
                    "start Incus first (see the 'incus' check)",
                )
                return
            check()

        gated.__name__ = check.__name__
        return gated

    # ------------------------------------------------------------------ system
    def check_os(self) -> None:
        pretty = "unknown"
        for line in read_text("/etc/os-release").splitlines():
            if line.startswith("PRETTY_NAME="):
                pretty = line.split("=", 1)[1].strip('"')
        self.add(
            "os", OK, f"{pretty} ({platform.machine()})", distro=pretty, arch=platform.machine()
        )

    def check_kernel_version(self) -> None:
        release = platform.release()
        if kernel_version(release) >= MIN_KERNEL:
            self.add("kernel_version", OK, release, version=release)
        else:
            self.add(
                "kernel_version",
                WARN,
                f"{release} is older than {MIN_KERNEL[0]}.{MIN_KERNEL[1]}: idmapped mounts "
                "and some isolation features may be missing",
                "upgrade to a kernel >= 5.15",
                version=release,
            )

    def check_timezone(self) -> None:

        host = host_timezone()
        mode = self.settings.timezone_mode
        details = {"host": host or "", "mode": mode}
        if mode == "utc":
            self.add("timezone", OK, "containers use UTC ([timezone] mode = utc)", **details)
        elif mode == "fixed":
            name = self.settings.timezone_name
            if name and valid_zone(name):
                self.add("timezone", OK, f"containers use {name} (fixed)", name=name, **details)
            else:
                self.add(
                    "timezone",
                    WARN,
                    f'[timezone] mode = "fixed" with an unknown name {name!r}: containers get UTC',
                    'set [timezone] name, e.g. "Europe/Warsaw"',
                    **details,
                )
        elif host:
            self.add("timezone", OK, f"containers inherit the host's {host}", **details)
        else:
            self.add(
                "timezone",
                WARN,
                "cannot tell the host's time zone: containers get UTC",
                "link /etc/localtime to a zone, or set [timezone] mode",
                **details,
            )

    def check_kernel_limits(self) -> None:

        low = low_sysctls()
        if low:
            self.add(
                "kernel_limits",
                WARN,
                "too low for many containers: "
                + ", ".join(f"{k}={v}" for k, v in low.items())
                + " (containers die in boot with 'Too many open files')",
                "sudo coi health --fix (or sudo coi setup)",
                **low,
            )
        else:
            self.add("kernel_limits", OK, "inotify, keys and map-count limits suit many containers")

    # ------------------------------------------------------------------ critical
    def check_incus(self) -> None:
        try:
            version = self.incus.ping()
        except SocketPermissionDenied as exc:
            self.add(
                "incus",
                FAIL,
                str(exc).split(":")[0],
                "sudo usermod -aG incus-admin $USER, then log in again",
                socket=self.incus.socket_path,
            )
            return
        except IncusError as exc:
            self.add(
                "incus",
                FAIL,
                str(exc).split(":")[0],
                "start Incus: 'sudo systemctl start incus', or 'sudo scripts/start-incus.sh' "
                "where there is no systemd (make setup does it)",
                socket=self.incus.socket_path,
            )
            return
        self._daemon_ok = True
        major_minor = tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
        status = OK if major_minor >= (6, 0) else WARN
        self.add(
            "incus",
            status,
            f"version {version} on {self.incus.socket_path}",
            "" if status == OK else "upgrade Incus to 6.0 LTS or newer",
            version=version,
            socket=self.incus.socket_path,
        )

    def check_permissions(self) -> None:
        path = self.incus.socket_path
        if not os.path.exists(path):
            self.add("permissions", FAIL, f"{path} does not exist", "start the Incus daemon")
        elif os.access(path, os.R_OK | os.W_OK):
            who = "root" if os.geteuid() == 0 else "this user"
            self.add("permissions", OK, f"{path} is usable by {who}", socket=path)
        else:
            self.add(
                "permissions",
                FAIL,
                f"no access to {path}",
                "sudo usermod -aG incus-admin $USER, then log in again",
                socket=path,
            )

    def check_id_mapping(self) -> None:

        uid = os.getuid()
        if uid in (0, self.settings.code_uid):
            self.add(
                "id_mapping",
                OK,
                "root: raw.idmap needs no delegation"
                if uid == 0
                else "uid matches the agent's: idmapped mounts (shift)",
            )
        elif subid_allows(uid, "/etc/subuid") and subid_allows(os.getgid(), "/etc/subgid"):
            self.add("id_mapping", OK, f"uid {uid} may be mapped (raw.idmap)")
        else:
            self.add(
                "id_mapping",
                FAIL,
                f"uid {uid} is not delegated to Incus in /etc/subuid and /etc/subgid",
                "sudo coi setup --user $USER",
            )

    def check_image(self) -> None:
        alias = self.settings.image
        if not self.incus.image_exists(alias):
            self.add("image", FAIL, f"image '{alias}' not found", "run 'coi build'", alias=alias)
            return
        image = self.incus.get_image(alias)
        self.add(
            "image",
            OK,
            f"{alias} ({image.fingerprint[:12]}, {image.size / 1e6:.0f} MB)",
            alias=alias,
            fingerprint=image.fingerprint,
        )

    def check_image_age(self) -> None:
        alias = self.settings.image
        if not self.incus.image_exists(alias):
            self.add("image_age", WARN, "no image to age", "run 'coi build'")
            return

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
                WARN,
                "the image was built from an older recipe",
                "run 'coi build'",
                age_days=age,
            )
        elif age > IMAGE_MAX_AGE_DAYS:
            self.add(
                "image_age",
                WARN,
                f"built {age} days ago (security updates)",
                "run 'coi build --force'",
                age_days=age,
            )
        else:
            self.add("image_age", OK, f"built {age} day(s) ago", age_days=age)

    def check_privileged_profile(self) -> None:
        profiles = self.incus.request("GET", "/1.0/profiles", params={"recursion": 1}) or []
        bad = [
            p["name"]
            for p in profiles
            if str((p.get("config") or {}).get("security.privileged", "")).lower() == "true"
        ]
        if bad:
            self.add(
                "privileged_profile",
                FAIL,
                f"security.privileged=true in profile(s): {', '.join(bad)}",
                " ; ".join(f"incus profile unset {p} security.privileged" for p in bad),
                profiles=bad,
            )
        else:
            self.add(
                "privileged_profile",
                OK,
                f"none of {len(profiles)} profile(s) is privileged",
            )

    def check_privileged_instances(self) -> None:
        bad = [
            i.name
            for i in self.incus.list_instances(self.settings.container_prefix)
            if i.expanded_config.get("security.privileged", "").lower() == "true"
        ]
        if bad:
            self.add(
                "privileged_instances",
                FAIL,
                f"privileged coi container(s): {', '.join(bad)}",
                " ; ".join(f"incus config unset {n} security.privileged" for n in bad),
                containers=bad,
            )
        else:
            self.add("privileged_instances", OK, "every coi container is unprivileged")

    def check_security_posture(self) -> None:
        """The default profile's isolation: unprivileged, seccomp, AppArmor, no raw overrides.
        Without AppArmor on the host (Incus then runs without it) the posture is still OK:
        user namespaces plus seccomp, which is what COI reports as seccomp-only isolation."""
        config = self.incus.get_profile("default").get("config") or {}
        privileged = str(config.get("security.privileged", "")).lower() == "true"
        raw_seccomp = bool(str(config.get("raw.seccomp", "")).strip())
        raw_apparmor = bool(str(config.get("raw.apparmor", "")).strip())
        has_seccomp = any(
            line.startswith("Seccomp:") for line in read_text("/proc/self/status").splitlines()
        )
        has_apparmor = read_text("/sys/module/apparmor/parameters/enabled").strip() == "Y"
        details: dict[str, Any] = {
            "privileged": privileged,
            "raw_seccomp_override": raw_seccomp,
            "raw_apparmor_override": raw_apparmor,
        }
        if privileged:
            details["seccomp"] = details["apparmor"] = "disabled (privileged)"
            self.add(
                "security_posture",
                FAIL,
                "privileged containers: seccomp, AppArmor and user namespaces are off",
                "incus profile unset default security.privileged",
                **details,
            )
            return
        details["seccomp"] = (
            "custom override" if raw_seccomp else "enabled (default)" if has_seccomp else "missing"
        )
        details["apparmor"] = (
            "custom override"
            if raw_apparmor
            else "enabled (default)"
            if has_apparmor
            else "not available"
        )
        if not has_seccomp:
            self.add(
                "security_posture",
                FAIL,
                "the kernel has no seccomp: containers have no syscall filter",
                "use a kernel built with CONFIG_SECCOMP",
                **details,
            )
        elif raw_seccomp or raw_apparmor:
            self.add(
                "security_posture",
                WARN,
                "raw.seccomp/raw.apparmor overrides in the default profile: check them",
                "incus profile unset default raw.seccomp ; incus profile unset default "
                "raw.apparmor",
                **details,
            )
        elif has_apparmor:
            self.add(
                "security_posture",
                OK,
                "full isolation: unprivileged containers with seccomp and AppArmor",
                **details,
            )
        else:
            self.add(
                "security_posture",
                OK,
                "unprivileged containers with seccomp; AppArmor is not available on this host "
                "(user namespaces + seccomp isolation)",
                **details,
            )

    def check_idmapped_mounts(self) -> None:
        features = (self.incus.server_info.get("environment") or {}).get("kernel_features") or {}
        if str(features.get("idmapped_mounts", "")).lower() == "true":
            self.add("idmapped_mounts", OK, "supported")
        else:
            self.add(
                "idmapped_mounts",
                WARN,
                "not supported: only raw.idmap can give workspace files the right owner",
                "use a kernel >= 5.15",
            )

    # ------------------------------------------------------------------ networking
    def _bridge(self) -> dict[str, Any] | None:
        return self.incus.get_network(self.settings.bridge)

    def check_network_bridge(self) -> None:
        network = self._bridge()
        if network is None:
            self.add(
                "network_bridge",
                FAIL,
                f"bridge '{self.settings.bridge}' not found",
                "sudo coi health --fix (or sudo coi setup)",
                bridge=self.settings.bridge,
            )
            return
        cidr = (network.get("config") or {}).get("ipv4.address", "?")
        self.add(
            "network_bridge",
            OK,
            f"{self.settings.bridge} {cidr}",
            bridge=self.settings.bridge,
            cidr=cidr,
        )

    def check_ip_forwarding(self) -> None:
        value = read_text("/proc/sys/net/ipv4/ip_forward").strip()
        if value == "1":
            self.add("ip_forwarding", OK, "enabled")
        else:
            self.add(
                "ip_forwarding",
                WARN,
                "disabled: containers cannot reach beyond the host",
                "sudo coi health --fix (sysctl -w net.ipv4.ip_forward=1)",
            )

    def check_firewall(self) -> None:
        """nftables for the per-container rules (mode-aware), and the bridge's NAT. NAT off is
        coi's secure default, so it is reported as OK, with how to turn it on."""

        mode = self.settings.network_mode
        network = self._bridge() or {}
        nat = (network.get("config") or {}).get("ipv4.nat") == "true"
        details: dict[str, Any] = {"mode": mode, "nat": nat, "bridge": self.settings.bridge}
        if nat:
            nat_text = f"NAT on: agents reach the internet within the {mode} mode's rules"
        else:
            nat_text = (
                f"NAT off on {self.settings.bridge} (the secure default): agents have no "
                f"internet access; '{NAT_HINT}' enables it"
            )
        if not shutil.which("nft") and not Path("/usr/sbin/nft").exists():
            status = OK if mode == "open" else FAIL
            self.add(
                "firewall",
                status,
                f"nft not installed: {mode} mode cannot be enforced; {nat_text}",
                "" if status == OK else "sudo apt-get install nftables",
                **details,
            )
            return
        try:
            self.firewall().check()
        except CoiError as exc:
            status = OK if mode == "open" else WARN
            self.add(
                "firewall",
                status,
                f"{exc}; {nat_text}",
                "" if status == OK else "sudo coi health --fix (installs coi-netctl)",
                helper=str(HELPER_PATH),
                **details,
            )
            return
        via = "root" if os.geteuid() == 0 else f"sudo {HELPER_PATH}"
        self.add(
            "firewall",
            OK,
            f"nftables rules for {mode} mode ({via}); {nat_text}",
            via=via,
            **details,
        )

    # ------------------------------------------------------------------ monitoring
    def check_nftables(self) -> None:
        nft = shutil.which("nft")
        if not nft:
            self.add(
                "nftables",
                WARN,
                "nft not installed: the threat monitor sees no network events",
                "sudo apt-get install nftables",
            )
            return
        if os.geteuid() == 0:
            done = subprocess.run([nft, "list", "tables"], capture_output=True, text=True)
            if done.returncode != 0:
                self.add(
                    "nftables",
                    FAIL,
                    f"nft cannot list tables: {done.stderr.strip()[:80]}",
                    "load the nf_tables kernel module",
                )
                return
        self.add("nftables", OK, f"{nft} usable (network events for the monitor)", path=nft)

    def check_proc_connector(self) -> None:
        netlink_connector = 11
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, netlink_connector)
            sock.bind((0, 1))  # CN_IDX_PROC group; port 0 lets the kernel pick
            sock.close()
            self.add("proc_connector", OK, "proc connector available")
        except OSError as exc:
            self.add(
                "proc_connector",
                WARN,
                f"proc connector unavailable ({exc.strerror}): the monitor falls back "
                "to /proc polling",
                "run the monitor as root (coi setup installs it)",
            )

    def check_kernel_log(self) -> None:
        if os.access("/dev/kmsg", os.R_OK):
            self.add("kernel_log", OK, "/dev/kmsg readable")
        else:
            self.add(
                "kernel_log",
                WARN,
                "/dev/kmsg not readable: network events come only through the privileged monitor",
                "run the monitor as root (coi setup installs it)",
            )

    def check_monitoring_configuration(self) -> None:

        s = self.settings
        pid = running_pid(coi_home()) if coi_home().is_dir() else 0
        details = {
            "enabled": s.monitoring_enabled,
            "auto_pause_on_high": s.monitoring_auto_pause_on_high,
            "auto_kill_on_critical": s.monitoring_auto_kill_on_critical,
            "daemon_pid": pid,
        }
        daemon = f"daemon running (pid {pid})" if pid > 0 else "daemon not running"
        if not s.monitoring_enabled:
            self.add(
                "monitoring_configuration",
                OK,
                f"disabled ([monitoring] enabled = true turns it on); {daemon}",
                **details,
            )
            return
        if os.geteuid() != 0 and not LAUNCHER.exists():
            self.add(
                "monitoring_configuration",
                WARN,
                "enabled, but the monitor needs root and its launcher is not installed",
                "sudo coi setup",
                **details,
            )
            return
        actions = []
        if s.monitoring_auto_pause_on_high:
            actions.append("pause on high")
        if s.monitoring_auto_kill_on_critical:
            actions.append("kill on critical")
        self.add(
            "monitoring_configuration",
            OK,
            f"enabled ({', '.join(actions) or 'alerts only'}); {daemon}"
            + ("" if pid > 0 else ", starts with the next session"),
            **details,
        )

    def _directory(self, key: str, path: Path, missing_status: str, missing_text: str) -> None:
        if not path.exists():
            self.add(
                key,
                missing_status,
                f"{path} {missing_text}",
                "coi health --fix" if missing_status != OK else "",
                path=str(path),
            )
        elif not path.is_dir():
            self.add(
                key,
                FAIL,
                f"{path} is not a directory",
                f"move {path} aside",
                path=str(path),
            )
        elif writable(path):
            self.add(key, OK, f"{path} (writable)", path=str(path))
        else:
            self.add(
                key,
                FAIL,
                f"{path} is not writable",
                f"fix the ownership of {path}",
                path=str(path),
            )

    def check_audit_log_directory(self) -> None:
        self._directory("audit_log_directory", coi_home() / "audit", OK, "(will be created)")

    def check_cgroup_availability(self) -> None:
        root = Path("/sys/fs/cgroup")
        unified = root / "cgroup.controllers"
        hybrid = root / "unified" / "cgroup.controllers"
        if unified.exists():
            controllers = unified.read_text().split()
            missing = [c for c in ("cpu", "memory", "pids") if c not in controllers]
            status = WARN if missing else OK
            self.add(
                "cgroup_availability",
                status,
                "cgroup v2: "
                + " ".join(controllers)
                + (f" (missing {', '.join(missing)}: limits are degraded)" if missing else ""),
                "" if status == OK else "enable the missing controllers",
                layout="unified",
                controllers=controllers,
            )
        elif hybrid.exists():
            v1 = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in ("unified",))
            self.add(
                "cgroup_availability",
                OK,
                "hybrid: cgroup v2 (unified) with v1 controllers " + ",".join(v1),
                layout="hybrid",
                controllers=v1,
            )
        else:
            self.add(
                "cgroup_availability",
                WARN,
                "no cgroup v2 hierarchy: limits and per-container accounting are degraded",
                "boot with cgroup v2 enabled",
                layout="v1",
            )

    # ------------------------------------------------------------------ storage
    def check_coi_directory(self) -> None:
        self._directory(
            "coi_directory", coi_home(), WARN, "does not exist (will be created on first run)"
        )

    def check_sessions_directory(self) -> None:

        tool = get_tool(self.settings.tool)
        self._directory(
            "sessions_directory", sessions_dir(tool.sessions_dir_name), OK, "(will be created)"
        )

    def check_disk_space(self) -> None:
        worst: tuple[float, str] | None = None
        home = coi_home()
        for path in (home if home.exists() else home.parent, Path("/var/lib/incus")):
            if path.exists():
                free = shutil.disk_usage(path).free / 1e9
                if worst is None or free < worst[0]:
                    worst = (free, str(path))
        if worst is None:
            self.add("disk_space", WARN, "nothing to measure")
            return
        free, where = worst
        status = OK if free >= LOW_DISK_GB else WARN if free >= CRITICAL_DISK_GB else FAIL
        fix = "" if status == OK else "free disk space (old images: 'coi image list --all')"
        self.add(
            "disk_space",
            status,
            f"{free:.1f} GB free on {where}",
            fix,
            available_gb=round(free, 1),
            path=where,
        )

    def _coi_pool(self) -> str:
        if self.settings.storage_pool:
            return self.settings.storage_pool
        pools = {p["name"] for p in self.incus.list_storage_pools()}
        if "coi" in pools:
            return "coi"
        root = (self.incus.get_profile("default").get("devices") or {}).get("root") or {}
        return str(root.get("pool", ""))

    def check_incus_storage_pool(self) -> None:
        name = self._coi_pool()
        pools = {p["name"]: p for p in self.incus.list_storage_pools()}
        if not name or name not in pools:
            self.add(
                "incus_storage_pool",
                FAIL,
                "no storage pool for coi containers",
                "sudo coi health --fix (or sudo coi setup)",
            )
            return
        driver = pools[name].get("driver", "?")
        usage = self.incus.request("GET", f"/1.0/storage-pools/{name}/resources")
        space = usage.get("space") or {}
        total, used = int(space.get("total") or 0), int(space.get("used") or 0)
        free_gb = (total - used) / 1e9 if total else 0.0
        percent = 100 * used / total if total else 0.0
        message = f"'{name}' ({driver}), {free_gb:.1f} GB free, {percent:.0f}% used"
        details = {"pool": name, "driver": driver, "free_gb": round(free_gb, 1)}
        details["used_pct"] = round(percent, 1)
        if total and (free_gb < 2 or percent > 90):
            self.add(
                "incus_storage_pool",
                FAIL,
                message,
                "free space in the pool ('coi clean', 'coi image list --all')",
                **details,
            )
        elif driver == "dir":
            self.add(
                "incus_storage_pool",
                WARN,
                message + ": the dir driver re-unpacks the image on every launch (~3 s)",
                "use a btrfs pool: 'sudo coi setup' creates one when btrfs-progs is installed",
                **details,
            )
        elif total and (free_gb < 5 or percent > 80):
            self.add("incus_storage_pool", WARN, message, "free space in the pool", **details)
        else:
            self.add("incus_storage_pool", OK, message, **details)

    def check_root_disk(self) -> None:
        devices = self.incus.get_profile("default").get("devices") or {}
        if "root" in devices:
            pool = devices["root"].get("pool")
            self.add("root_disk", OK, f"default profile: on pool '{pool}'", pool=pool)
        else:
            self.add(
                "root_disk",
                WARN,
                "the default profile has no root disk (coi adds one per container)",
                "sudo coi health --fix (or sudo coi setup)",
            )

    # ------------------------------------------------------------------ configuration
    def check_config(self) -> None:

        loaded = [str(p) for p in config_files(Path.cwd()) if p.is_file()]
        try:
            load_settings()
        except CoiError as exc:
            self.add(
                "config",
                FAIL,
                str(exc),
                "fix the file named above",
                loaded_from=loaded,
            )
            return
        self.add(
            "config",
            OK,
            "valid: " + (", ".join(loaded) if loaded else "built-in defaults"),
            loaded_from=loaded,
        )

    def check_network_mode(self) -> None:
        mode = self.settings.network_mode
        if mode == "open":
            self.add(
                "network_mode",
                WARN,
                "open: no restrictions (private networks and cloud metadata are reachable)",
                '[network] mode = "restricted" (or "allowlist")',
                mode=mode,
            )
        elif mode == "allowlist":
            count = len(self.settings.allowed_domains)
            self.add("network_mode", OK, f"allowlist ({count} domain(s))", mode=mode, domains=count)
        else:
            self.add(
                "network_mode",
                OK,
                f"{mode} (private networks and cloud metadata blocked)",
                mode=mode,
            )

    def check_egress(self) -> None:
        settings = self.settings
        if settings.network_mode == "open":
            self.add("egress", OK, "open mode: nothing is filtered", egress="none")
            return
        if settings.egress != "proxy":
            self.add(
                "egress",
                OK,
                "by address: names are resolved on the host at the start (a shared or CDN "
                "address opens every site on it; nothing is logged by name)",
                '[network] egress = "proxy" filters and logs by name',
                egress="addresses",
            )
            return
        if self.incus.remote is not None:
            self.add(
                "egress",
                FAIL,
                "by name needs the local Incus: the proxy listens on this host's bridge",
                '[network] egress = "addresses" for a remote',
                egress="proxy",
            )
            return
        state = running_proxy(settings.bridge)
        if state is None:
            self.add(
                "egress",
                OK,
                "by name: the proxy starts with the first session",
                egress="proxy",
                running=False,
            )
            return
        self.add(
            "egress",
            OK,
            f"by name: proxy on {state['address']}:{state['port']}, resolver on port "
            f"{state['dns_port']} (pid {state['pid']})",
            egress="proxy",
            running=True,
            **{k: state[k] for k in ("address", "port", "dns_port", "pid")},
        )

    def check_tool(self) -> None:

        name = self.settings.tool
        if name in TOOLS:
            self.add("tool", OK, name, name=name)
        else:
            self.add("tool", WARN, f"unknown tool: {name}", f"one of {', '.join(TOOLS)}")

    # ------------------------------------------------------------------ status
    def check_active_containers(self) -> None:
        instances = self.incus.list_instances(self.settings.container_prefix)
        running = [i.name for i in instances if i.running]
        frozen = [i.name for i in instances if i.frozen]
        text = f"{len(running)} running, {len(instances)} total"
        if frozen:
            text += f", {len(frozen)} frozen by the monitor ('coi unfreeze')"
        self.add(
            "active_containers",
            OK,
            text,
            running=len(running),
            frozen=len(frozen),
            total=len(instances),
        )

    def check_saved_sessions(self) -> None:

        sessions = all_saved_sessions()
        self.add("saved_sessions", OK, f"{len(sessions)} saved session(s)", count=len(sessions))

    def stopped_ephemeral(self) -> list[str]:
        return [
            i.name
            for i in self.incus.list_instances(self.settings.container_prefix)
            if i.status == "Stopped"
            and i.config.get("user.coi.persistent") != "true"
            and i.config.get("user.coi.managed") == "true"
        ]

    def firewall(self) -> Firewall:
        return Firewall(use_sudo=self.settings.use_sudo)

    def orphan_rules(self) -> list[str]:
        """Network rule sets whose container is gone; [] when they cannot be listed."""

        try:
            first = orphan_interfaces(self.incus, self.firewall())
            if not first:
                return []
            # coi removes a container's rules just after deleting it: look again, and report
            # only rules that outlived that moment.
            time.sleep(ORPHAN_RECHECK_SEC)
            return [
                iface for iface in orphan_interfaces(self.incus, self.firewall()) if iface in first
            ]
        except CoiError:
            return []

    def check_orphaned_resources(self) -> None:
        stopped = self.stopped_ephemeral()
        rules = self.orphan_rules()
        if stopped or rules:
            parts = []
            if stopped:
                parts.append(
                    f"{len(stopped)} stopped ephemeral container(s): {', '.join(stopped[:5])}"
                )
            if rules:
                parts.append(f"network rules of {len(rules)} deleted container(s)")
            self.add(
                "orphaned_resources",
                WARN,
                "; ".join(parts),
                "coi health --fix (or coi clean, coi clean --orphans)",
                containers=stopped,
                network_rules=rules,
            )
        else:
            self.add("orphaned_resources", OK, "none", containers=[], network_rules=[])

    # ------------------------------------------------------------------ verbose only
    def check_dns_resolution(self) -> None:
        """Offline on purpose (coi sends no traffic off the machine to check itself): the host
        has resolvers, and the bridge serves DNS to the containers."""
        servers = [
            line.split()[1]
            for line in read_text("/etc/resolv.conf").splitlines()
            if line.startswith("nameserver") and len(line.split()) > 1
        ]
        details: dict[str, Any] = {"host_nameservers": servers}
        if not self._daemon_ok:
            bridge_dns = "unknown (Incus not reachable)"
        else:
            network = self._bridge() or {}
            config = network.get("config") or {}
            address = str(config.get("ipv4.address", "")).split("/")[0]
            bridge_dns = (
                f"dnsmasq on {self.settings.bridge} ({address})" if address else "no bridge"
            )
            details["bridge_dns"] = address
        if not servers:
            self.add(
                "dns_resolution",
                WARN,
                f"no nameserver in /etc/resolv.conf; containers use {bridge_dns}",
                "configure a resolver on the host",
                **details,
            )
        else:
            self.add(
                "dns_resolution",
                OK,
                f"host resolvers {', '.join(servers[:3])}; containers use {bridge_dns} "
                "(no lookup sent)",
                **details,
            )

    def check_passwordless_sudo(self) -> None:
        if os.geteuid() == 0:
            self.add("passwordless_sudo", OK, "running as root: no sudo needed")
            return
        sudo = shutil.which("sudo")
        if sudo is None:
            self.add(
                "passwordless_sudo",
                WARN,
                "sudo not installed: only root can manage network rules and the monitor",
                "install sudo, then sudo coi setup",
            )
            return
        done = subprocess.run([sudo, "-n", "true"], capture_output=True, timeout=10)
        if done.returncode == 0:
            self.add("passwordless_sudo", OK, "sudo -n works")
        else:
            self.add(
                "passwordless_sudo",
                OK,
                "sudo needs a password: coi uses only its own rules (coi-netctl, the monitor "
                "launcher) that 'sudo coi setup' installs",
            )

    def check_process_monitoring(self) -> None:

        root = os.geteuid() == 0
        readable = os.access("/proc/1/environ", os.R_OK)
        connector = self.result("proc_connector")
        events = connector is not None and connector.status == OK
        details: dict[str, Any] = {
            "root": root,
            "proc_readable": readable,
            "proc_connector": events,
        }
        if root or LAUNCHER.exists():
            how = "in-process as root" if root else f"through {LAUNCHER}"
            self.add(
                "process_monitoring",
                OK,
                f"the monitor can watch every container process ({how}; "
                f"{'exec events' if events else '/proc polling'})",
                **details,
            )
        else:
            self.add(
                "process_monitoring",
                WARN,
                "the monitor needs root and its launcher is not installed",
                "sudo coi setup",
                **details,
            )

    # ------------------------------------------------------------------ --fix
    def fixes(self) -> list[Fix]:
        """The safe repairs for the checks that are not OK (run() first)."""
        out: list[Fix] = []
        bad = {r.key for r in self.results if r.status != OK}
        root = os.geteuid() == 0
        home = coi_home()
        if "coi_directory" in bad and not home.exists():
            out.append(Fix("coi_directory", f"create {home}", self._fix_directories))
        if root and "ip_forwarding" in bad:
            out.append(
                Fix("ip_forwarding", "enable IPv4 forwarding (net.ipv4.ip_forward=1)", fix_forward)
            )
        if root and "kernel_limits" in bad:
            out.append(Fix("kernel_limits", "raise inotify/keys/map-count limits", fix_limits))
        setup = [k for k in ("incus_storage_pool", "root_disk", "network_bridge") if k in bad]
        if self._daemon_ok and setup:
            what = {
                "incus_storage_pool": "the storage pool",
                "root_disk": "the default profile's root disk",
                "network_bridge": f"the bridge {self.settings.bridge} (NAT off)",
            }
            out.append(
                Fix(
                    ",".join(setup),
                    "create " + ", ".join(what[k] for k in setup) + " as 'coi setup' does",
                    self._fix_provision,
                )
            )
        if root and "firewall" in bad and shutil.which("nft"):
            out.append(Fix("firewall", "install coi-netctl and its sudo rule", fix_helper))
        orphans = self.result("orphaned_resources")
        if self._daemon_ok and orphans is not None and orphans.status != OK:
            parts = []
            if orphans.details.get("containers"):
                parts.append(
                    "save and delete stopped ephemeral container(s) "
                    + ", ".join(orphans.details["containers"])
                )
            if orphans.details.get("network_rules"):
                parts.append(
                    "remove network rules of gone containers "
                    + ", ".join(orphans.details["network_rules"])
                )
            out.append(Fix("orphaned_resources", "; ".join(parts), self._fix_orphans))
        return out

    def _fix_directories(self) -> str:

        made = []
        for path in (
            coi_home(),
            coi_home() / "audit",
            sessions_dir(get_tool(self.settings.tool).sessions_dir_name),
        ):
            if not path.exists():
                path.mkdir(parents=True, mode=0o700 if path == coi_home() else 0o755)
                made.append(str(path))
        return "created " + ", ".join(made) if made else "nothing to create"

    def _fix_provision(self) -> str:

        steps: list[str] = []
        prov = Provisioner(
            self.incus, report=lambda s: steps.append(s.line()) if s.changed else None
        )
        pool = self._coi_pool()
        if not pool or pool not in {p["name"] for p in self.incus.list_storage_pools()}:
            pool = prov.ensure_pool(self.settings.storage_pool or "coi")
        prov.ensure_root_disk(pool)
        prov.ensure_bridge(self.settings.bridge, nat=None)
        return "; ".join(line.strip() for line in steps) or "nothing was missing"

    def _fix_orphans(self) -> str:

        done = []
        manager = SessionManager(self.incus, self.settings, say=lambda *a, **k: None)
        for name in self.stopped_ephemeral():
            outcome = manager.finalize_if_stopped(name)
            done.append(f"{name} {outcome}")
        try:
            rules = clean_orphans(self.incus, dry_run=False, firewall=self.firewall())
        except CoiError as exc:
            done.append(f"network rules not removed: {exc}")
        else:
            done += [f"rules of {iface} removed" for iface in rules]
        return "; ".join(done) or "nothing left to clean"


def fix_forward() -> str:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")
    return "net.ipv4.ip_forward = 1"


def fix_limits() -> str:

    return "raised " + ", ".join(raise_sysctls())


def fix_helper() -> str:

    return "; ".join(line.strip() for line in install_helper())


def writable(path: Path) -> bool:
    """Really writable (os.access says yes to root even on a read-only mount)."""
    probe = path / f".health-check-{os.getpid()}"
    try:
        probe.write_text("")
        probe.unlink()
    except OSError:
        return False
    return True


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


EXIT_CODES = {"healthy": 0, "degraded": 1, "unhealthy": 2}
