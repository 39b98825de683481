"""coi's side of the privileged path: run coi-netctl's commands as root in-process, or as a
normal user through `sudo -n /usr/local/libexec/coi-netctl`, and install that helper."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.core.privilege import ADMIN_GROUP, SUDOERS_DIR, install_root_file, install_sudo_rule
from coi_tui.core.timing import span
from coi_tui.network import netctl

HELPER_PATH = Path("/usr/local/libexec/coi-netctl")
SUDOERS_PATH = SUDOERS_DIR / "coi-netctl"
SETUP_HINT = "run 'sudo coi setup' to install the coi-netctl helper"


def iface_for(container: str) -> str:
    """The container's host-side veth name: deterministic, unique, 14 chars (limit 15)."""
    return netctl.IFACE_PREFIX + hashlib.sha256(container.encode()).hexdigest()[:10]


@dataclass
class Policy:
    mode: str
    gateway: str
    allow_local: bool = False
    block_private: bool = True
    block_metadata: bool = True
    allowed: list[str] = field(default_factory=list)
    # (ip, ports) opened on purpose: [[network.hosts]] and `coi hosts add`
    hosts: list[tuple[str, list[str]]] = field(default_factory=list)
    dns_servers: list[str] = field(default_factory=list)  # restricted mode only
    allowed_ports: list[str] = field(default_factory=list)  # "443", "8000-8100"
    # the egress proxy's port and the destination ports sent to it (network/egress)
    proxy: tuple[int, list[str]] | None = None
    resolver: int = 0  # its resolver's port: every DNS query goes there

    def argv(self, iface: str) -> list[str]:
        argv = ["apply", iface, self.mode, self.gateway]
        if self.allow_local:
            argv.append("--allow-local")
        if not self.block_private:
            argv.append("--no-block-private")
        if not self.block_metadata:
            argv.append("--no-block-metadata")
        if self.mode == "open":
            return argv
        if self.mode == "allowlist":
            for cidr in self.allowed:
                argv += ["--allow", cidr]
        for address, ports in self.hosts:
            argv += ["--host", f"{address}:{','.join(ports)}" if ports else address]
        if self.mode == "restricted":
            for server in self.dns_servers:
                argv += ["--dns", server]
        if self.allowed_ports:
            argv += ["--ports", ",".join(self.allowed_ports)]
        if self.proxy is not None:
            argv += ["--proxy", f"{self.proxy[0]}:{','.join(self.proxy[1])}"]
        if self.resolver:
            argv += ["--resolver", str(self.resolver)]
        return argv


class Firewall:
    """Every call raises CoiError with one line when nftables cannot be used. Not root and
    `use_sudo` False (`[network] use_sudo = false`): sudo is never called."""

    def __init__(self, helper: Path = HELPER_PATH, use_sudo: bool = True) -> None:
        self.helper = helper
        self.use_sudo = use_sudo

    def call(self, argv: list[str]) -> str:
        with span("exec", f"coi-netctl {' '.join(argv[:2])}"):
            return self._call(argv)

    def _call(self, argv: list[str]) -> str:
        if os.geteuid() == 0:
            try:
                return netctl.run(argv)
            except netctl.NetctlError as exc:
                raise CoiError(f"network isolation: {exc}") from None
        if not self.use_sudo:
            raise CoiError(
                "network isolation needs root for nftables, and [network] use_sudo = false "
                "forbids sudo: run coi as root or allow sudo"
            )
        if not self.helper.is_file():
            raise CoiError(f"network isolation needs root for nftables: {SETUP_HINT}")
        sudo = shutil.which("sudo")
        if sudo is None:
            raise CoiError("network isolation needs sudo to run coi-netctl: install sudo")
        proc = subprocess.run(
            [sudo, "-n", str(self.helper), *argv], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            line = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            if "password" in line or "not allowed" in line:
                line = f"sudo refused coi-netctl ({line}): {SETUP_HINT}"
            raise CoiError(f"network isolation: {line}")
        return proc.stdout

    def check(self) -> None:
        self.call(["check"])

    def apply(self, container: str, policy: Policy) -> None:
        self.call(policy.argv(iface_for(container)))

    def remove_iface(self, iface: str) -> None:
        self.call(["remove", iface])

    def remove(self, container: str) -> None:
        self.remove_iface(iface_for(container))

    def interfaces(self) -> list[str]:
        return [line for line in self.call(["list"]).splitlines() if line]


def helper_text() -> str:
    """netctl.py as a script run in isolated mode (no PYTHONPATH, no user site)."""
    source = Path(netctl.__file__).read_text()
    return "#!/usr/bin/python3 -I\n" + source


def install_helper(group: str = ADMIN_GROUP) -> list[str]:
    """`coi setup`: install coi-netctl and the sudoers rule for exactly it. Report lines."""
    if os.geteuid() != 0:
        return [f"  [   skip] network helper: needs root ({SETUP_HINT})"]
    changed = install_root_file(HELPER_PATH, helper_text(), 0o755)
    return [
        f"  [{'created' if changed else 'ok':>7}] network helper: {HELPER_PATH}",
        install_sudo_rule(
            SUDOERS_PATH.name,
            HELPER_PATH,
            "let Incus admins install and remove coi's own nftables rules, nothing else.",
            "network helper sudo rule",
            group,
        ),
    ]
