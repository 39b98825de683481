"""Network isolation, the parts a session hook (sessions/network_hook.py), `coi build
--profile`, `coi clean --orphans` and the allowlist refresher share: the policy a container's
rules are built from, the allowlist resolved on the host and written to its /etc/hosts, the
NIC hardening, the orphan sweep and the refresh loop."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from coi_tui.config import Settings, load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.core.paths import coi_home, logs_dir
from coi_tui.incus import Incus, IncusError, InstanceNotFound
from coi_tui.network import netctl
from coi_tui.network.egress.policy import EgressPolicy, parse_pattern
from coi_tui.network.egress.service import ensure_proxy, remove_policy, write_policy
from coi_tui.network.firewall import Firewall, Policy, iface_for
from coi_tui.network.hosts import all_hosts, check_ports, firewall_hosts, merge_hosts_file
from coi_tui.network.resolve import (
    Resolved,
    hosts_block,
    is_address,
    merge_hosts,
    public_host,
    refresh_seconds,
    resolve,
    split_ports,
)

MODE_KEY = "user.coi.network.mode"
# Incus' own anti-spoofing on the NIC: source MAC and IPv4 pinned, no L2 to sibling ports.
NIC_HARDENING = {
    "security.mac_filtering": "true",
    "security.ipv4_filtering": "true",
    "security.port_isolation": "true",
}


def check_mode(settings: Settings) -> str:
    mode = settings.network_mode
    if mode not in netctl.MODES:
        raise CoiError(f"[network] mode must be restricted, allowlist or open, not {mode!r}")
    return mode


def gateway_of(incus: Incus, bridge: str) -> str:
    network = incus.get_network(bridge) or {}
    address = str((network.get("config") or {}).get("ipv4.address", ""))
    if "/" not in address:
        raise CoiError(f"network isolation: bridge '{bridge}' has no IPv4 address")
    return address.split("/")[0]


def cache_path(name: str) -> Path:
    return coi_home() / "network-cache" / f"{name}.json"


def resolve_allowlist(name: str, domains: list[str]) -> Resolved:
    """Resolve on the host; names that fail keep their last known addresses."""
    resolved = resolve(domains)
    path = cache_path(name)
    if resolved.failed:
        with suppress(OSError, ValueError):
            cached = json.loads(path.read_text())
            for entry in resolved.failed:
                kept = [a for a in cached.get(entry, []) if public_host(a)]
                if kept and entry not in resolved.private:
                    resolved.addresses[entry] = kept
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(resolved.addresses, indent=1))
    return resolved


def proxied(settings: Settings) -> bool:
    """Whether web traffic goes through the egress proxy (loading the config refused
    wildcards, ports and denied_domains without it)."""
    return settings.egress == "proxy" and check_mode(settings) != "open"


def allowlist_entries(settings: Settings) -> list[str]:
    """What the host resolves for the container's /etc/hosts and its address set: through
    the proxy only the entries that are addresses (names go to coi's resolver and proxy)."""
    if not proxied(settings):
        return list(settings.allowed_domains)
    return [e for e in settings.allowed_domains if is_address(split_ports(e)[0])]


def egress_for(
    settings: Settings, container: str, gateway: str, ports_cap: list[str]
) -> tuple[tuple[int, list[str]] | None, int]:
    """The container's policy written for the egress proxy, the proxy running: (its port,
    the destination ports to send it; None when allowed_ports leaves none of them) and its
    resolver's port."""
    mode = check_mode(settings)
    if settings.dns_servers:
        raise CoiError(
            '[network] dns_servers cannot be used with egress = "proxy": coi\'s resolver '
            "answers every query of the container"
        )
    allow = (
        [parse_pattern(e) for e in settings.allowed_domains if not is_address(split_ports(e)[0])]
        if mode == "allowlist"
        else []
    )
    deny = [parse_pattern(e) for e in settings.denied_domains]
    policy = EgressPolicy(mode, allow, deny, settings.allow_local_network_access)
    policy.hold_sec = float(settings.egress_hold_sec)
    if container:
        write_policy(container, settings.bridge, settings.project, policy)
    port, dns_port = ensure_proxy(settings.bridge, gateway)
    ports = [p for p in policy.ports() if not ports_cap or within(p, ports_cap)]
    return ((port, ports) if ports else None), dns_port


def within(span: str, ranges: list[str]) -> bool:
    """Whether the port span ("443", "8000-8100") lies inside one of `ranges`."""
    low, _, high = span.partition("-")
    for text in ranges:
        cap_low, _, cap_high = text.partition("-")
        if int(cap_low) <= int(low) and int(high or low) <= int(cap_high or cap_low):
            return True
    return False


def policy_for(
    incus: Incus, settings: Settings, resolved: Resolved | None, container: str = ""
) -> Policy:
    dns = [str(a) for a in getattr(settings, "dns_servers", None) or []]
    if dns and check_mode(settings) == "allowlist":
        raise CoiError(
            "[network] dns_servers cannot be used in allowlist mode (it blocks DNS: names "
            "come from /etc/hosts); remove it or use restricted mode"
        )
    gateway = gateway_of(incus, settings.bridge)
    ports_cap = check_ports(list(getattr(settings, "allowed_ports", None) or []))
    allowed = resolved.cidrs() if resolved else []
    proxy, resolver = None, 0
    if proxied(settings):
        if incus.remote is not None:
            raise CoiError(
                '[network] egress = "proxy" needs the local Incus (the proxy listens on the '
                "bridge's address on this host)"
            )
        proxy, resolver = egress_for(settings, container, gateway, ports_cap)
        # (the allowlist resolved only its addresses: names go through the proxy)
    return Policy(
        mode=check_mode(settings),
        gateway=gateway,
        allow_local=settings.allow_local_network_access,
        block_private=settings.block_private_networks,
        block_metadata=settings.block_metadata_endpoint,
        allowed=allowed,
        # entries with :ports open their addresses on those ports only (as in COI)
        hosts=firewall_hosts(all_hosts(settings, container))
        + (resolved.port_hosts() if resolved else []),
        dns_servers=dns,
        allowed_ports=ports_cap,
        proxy=proxy,
        resolver=resolver,
    )


def write_extra_hosts(incus: Incus, settings: Settings, name: str) -> None:
    """[[network.hosts]] and `coi hosts` names in the container's /etc/hosts."""
    entries = all_hosts(settings, name)
    try:
        current = incus.pull_file(name, "/etc/hosts").decode()
    except IncusError:
        current = "127.0.0.1\tlocalhost\n"
    updated = merge_hosts_file(current, entries)
    if updated != current:
        incus.push_file(name, "/etc/hosts", updated.encode())


def write_hosts(incus: Incus, name: str, resolved: Resolved) -> None:
    """The allowlist's only name service: DNS egress is blocked."""
    try:
        current = incus.pull_file(name, "/etc/hosts").decode()
    except IncusError:
        current = "127.0.0.1\tlocalhost\n"
    incus.push_file(name, "/etc/hosts", merge_hosts(current, hosts_block(resolved)).encode())


# ---------------------------------------------------------------------- `coi build --profile`
class BuildNetwork:
    """A session's network policy for a build container (see sessions/network_hook.py)."""

    def __init__(
        self,
        incus: Incus,
        settings: Settings,
        name: str,
        *,
        say: Callable[[str], None],
        firewall: Firewall | None = None,
    ) -> None:
        self.incus, self.settings, self.name, self.say = incus, settings, name, say
        self.mode = check_mode(settings)
        self.firewall = firewall or Firewall(use_sudo=settings.use_sudo)
        self.resolved: Resolved | None = None
        self.applied = False
        self.has_nic = False

    def devices(self) -> dict[str, dict[str, str]]:
        if self.incus.get_network(self.settings.bridge) is None:
            # No coi bridge: mask any NIC an Incus profile would add (it has no rules).
            return {} if self.mode == "open" else {"eth0": {"type": "none"}}
        self.has_nic = True
        return {
            "eth0": {
                "type": "nic",
                "network": self.settings.bridge,
                "name": "eth0",
                "host_name": iface_for(self.name),
                **NIC_HARDENING,
            }
        }

    def before_start(self) -> None:
        """The rules exist before the interface does: the first packet meets them."""
        if not self.has_nic:
            return
        if self.mode == "allowlist":
            self.resolved = resolve_allowlist(self.name, allowlist_entries(self.settings))
        try:
            self.firewall.apply(
                self.name, policy_for(self.incus, self.settings, self.resolved, self.name)
            )
            self.applied = True
        except CoiError as exc:
            if self.mode != "open":
                raise CoiError(f"{exc} (the build fails closed in {self.mode} mode)") from None
            self.say(f"warning: {exc} (open mode continues without rules)")

    def after_start(self) -> None:
        if self.resolved is not None:
            write_hosts(self.incus, self.name, self.resolved)

    def close(self) -> None:
        if self.applied:
            try:
                self.firewall.remove(self.name)
            except CoiError as exc:
                self.say(f"warning: {exc}; 'coi clean --orphans' removes leftovers")
        if self.resolved is not None:
            with suppress(OSError):
                cache_path(self.name).unlink()
        remove_policy(self.name)


# ---------------------------------------------------------------------- orphans (`coi clean`)
def orphan_interfaces(incus: Incus, firewall: Firewall | None = None) -> list[str]:
    """Interfaces with rules whose container is gone (in any project)."""
    firewall = firewall or Firewall()
    present = firewall.interfaces()
    if not present:
        return []
    data = incus.request("GET", "/1.0/instances", params={"all-projects": "true"})
    live = {iface_for(str(url).rstrip("/").rsplit("/", 1)[-1].split("?")[0]) for url in data}
    return [iface for iface in present if iface not in live]


def clean_orphans(incus: Incus, dry_run: bool, firewall: Firewall | None = None) -> list[str]:
    firewall = firewall or Firewall()
    orphans = orphan_interfaces(incus, firewall)
    if not dry_run:
        for iface in orphans:
            firewall.remove_iface(iface)
    return orphans


# ---------------------------------------------------------------------- allowlist refresh
def network_log(settings: Settings, container: str, event: str) -> None:
    """`[network.logging]`: one line per change of a container's network policy (rules
    applied with what they allow, refreshed, removed) in `path`; "~/.coi/..." is in the COI
    home. Never stops a session: a log that cannot be written is skipped."""
    if not settings.network_logging_enabled:
        return
    text = settings.network_logging_path
    path = coi_home() / text[len("~/.coi/") :] if text.startswith("~/.coi/") else Path(text)
    stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    with suppress(OSError):
        path.expanduser().parent.mkdir(parents=True, exist_ok=True)
        with path.expanduser().open("a", encoding="utf-8") as log:
            log.write(f"{stamp} {container} {event}\n")


def policy_summary(mode: str, resolved: Resolved | None) -> str:
    if resolved is None:
        return f"mode={mode}"
    return f"mode={mode} allowed={len(resolved.cidrs())} addresses of {len(resolved.addresses)}"


def refresh_allowlist(incus: Incus, settings: Settings, name: str) -> float | None:
    """Re-resolve the allowlist of a running container, swap its address set atomically and
    rewrite its /etc/hosts. Returns seconds until the next refresh, None to stop."""
    if check_mode(settings) != "allowlist" or proxied(settings):
        return None
    with file_lock(f"network-{name}"):
        try:
            if incus.status(name) != "Running":
                return None
        except InstanceNotFound:
            return None
        resolved = resolve_allowlist(name, allowlist_entries(settings))
        Firewall(use_sudo=settings.use_sudo).apply(
            name, policy_for(incus, settings, resolved, name)
        )
        write_hosts(incus, name, resolved)
    network_log(settings, name, f"refreshed {policy_summary('allowlist', resolved)}")
    return refresh_seconds(resolved.min_ttl, settings.refresh_interval_minutes)


def reapply_rules(incus: Incus, settings: Settings, name: str) -> str:
    """A running container's rules and /etc/hosts again, after its extra hosts changed.
    Uses the mode the container was started with. Returns that mode."""
    instance = incus.get_instance(name)
    mode = instance.config.get(MODE_KEY) or check_mode(settings)
    settings = dataclasses.replace(settings, network_mode=mode)
    with file_lock(f"network-{name}"):
        resolved = (
            resolve_allowlist(name, allowlist_entries(settings)) if mode == "allowlist" else None
        )
        if mode != "open" and "eth0" in instance.expanded_devices:
            Firewall(use_sudo=settings.use_sudo).apply(
                name, policy_for(incus, settings, resolved, name)
            )
        write_extra_hosts(incus, settings, name)
    return mode


def run_refresher(
    name: str,
    workspace: str,
    first_delay: float | None,
    say: Callable[[str], None],
    remote: str | None = None,
    poll: float = 5.0,
) -> None:
    """Loop until the container (on `remote`, a remote's name, or the local daemon) stops.
    The session supervisor may call this in a thread instead of spawn_refresher's process; it
    must not be both."""
    settings = load_settings(Path(workspace))
    incus = Incus(settings.socket or None, settings.project, remote=remote)
    delay = first_delay
    while delay is not None:
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline:
            try:
                if incus.status(name) != "Running":
                    return
            except IncusError:  # gone, or the daemon went away: nothing to refresh
                return
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
        try:
            delay = refresh_allowlist(incus, settings, name)
        except CoiError as exc:
            say(f"refresh failed: {exc}")
            delay = refresh_seconds(None, settings.refresh_interval_minutes)


def spawn_refresher(name: str, workspace: str, first_delay: float, remote: str | None) -> None:
    """A detached process per allowlist session that exits when the container stops."""
    log = open(logs_dir() / f"{name}.network.log", "ab")  # noqa: SIM115
    subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coi_tui.network.refresh",
            name,
            workspace,
            str(first_delay),
            *([remote] if remote else []),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=dict(os.environ),
        close_fds=True,
        cwd=workspace,
    )
    log.close()
