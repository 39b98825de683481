"""Network isolation as a session hook: NIC hardening before create, rules before start, the
allowlist's /etc/hosts before the agent, removal when the container ends, and the orphan sweep
and allowlist refresh that other commands call."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING

from coi_tui.config import Settings
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.core.paths import coi_home, logs_dir
from coi_tui.incus import Incus, IncusError, InstanceNotFound
from coi_tui.network import netctl
from coi_tui.network.firewall import Firewall, Policy, iface_for
from coi_tui.network.resolve import (
    Resolved,
    hosts_block,
    merge_hosts,
    public_host,
    refresh_seconds,
    resolve,
)
from coi_tui.sessions.hooks import LaunchContext, SessionHook

if TYPE_CHECKING:
    from coi_tui.sessions.manager import SessionManager

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


def policy_for(
    incus: Incus, settings: Settings, resolved: Resolved | None, container: str = ""
) -> Policy:
    from coi_tui.network.hosts import all_hosts, check_ports, firewall_hosts

    dns = [str(a) for a in getattr(settings, "dns_servers", None) or []]
    if dns and check_mode(settings) == "allowlist":
        raise CoiError(
            "[network] dns_servers cannot be used in allowlist mode (it blocks DNS: names "
            "come from /etc/hosts); remove it or use restricted mode"
        )
    return Policy(
        mode=check_mode(settings),
        gateway=gateway_of(incus, settings.bridge),
        allow_local=settings.allow_local_network_access,
        block_private=settings.block_private_networks,
        block_metadata=settings.block_metadata_endpoint,
        allowed=resolved.cidrs() if resolved else [],
        hosts=firewall_hosts(all_hosts(settings, container)),
        dns_servers=dns,
        allowed_ports=check_ports(list(getattr(settings, "allowed_ports", None) or [])),
    )


def write_extra_hosts(incus: Incus, settings: Settings, name: str) -> None:
    """[[network.hosts]] and `coi hosts` names in the container's /etc/hosts."""
    from coi_tui.network.hosts import all_hosts, merge_hosts_file

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


class NetworkHook(SessionHook):
    def __init__(self) -> None:
        self.firewall = Firewall()
        self.resolved: dict[str, Resolved] = {}

    def prepare_instance(self, ctx: LaunchContext) -> None:
        check_mode(ctx.manager.settings)
        nic = ctx.devices.get("eth0")
        if nic is None:
            return
        nic.update({"host_name": iface_for(ctx.session.container), **NIC_HARDENING})
        ctx.config[MODE_KEY] = check_mode(ctx.manager.settings)

    def _harden(self, incus: Incus, name: str, mode: str) -> bool:
        """A copy (snapshot branch) carries its source's host_name, and a persistent container
        may predate isolation: give both this container's own NIC shape, and record the mode,
        in one read and at most one write before it starts. Returns whether it has a NIC."""
        instance = incus.get_instance(name)
        nic = instance.devices.get("eth0")
        devices: dict[str, dict[str, str] | None] = {}
        if nic is not None:
            wanted = {"host_name": iface_for(name), **NIC_HARDENING}
            if any(nic.get(k) != v for k, v in wanted.items()):
                devices["eth0"] = {**nic, **wanted}
        config = {MODE_KEY: mode} if instance.config.get(MODE_KEY) != mode else {}
        if devices or config:
            incus.update_instance(name, config=config or None, devices=devices or None)
        return "eth0" in instance.expanded_devices

    def before_start(self, ctx: LaunchContext) -> None:
        manager, name = ctx.manager, ctx.session.container
        settings, incus = manager.settings, manager.incus
        mode = check_mode(settings)
        if not self._harden(incus, name, mode):
            return  # no network at all
        resolved = None
        if mode == "allowlist":
            resolved = resolve_allowlist(name, settings.allowed_domains)
            for entry in resolved.private:
                manager.say(
                    f"warning: allowlist: {entry} resolves to a private address, which stays "
                    "blocked (open it with [[network.hosts]] in your own config)"
                )
            for entry in resolved.failed:
                if entry not in resolved.addresses and entry not in resolved.private:
                    manager.say(f"warning: allowlist: cannot resolve {entry}; it stays blocked")
            self.resolved[name] = resolved
        try:
            # Rules key on the interface name, so they exist before the veth does: the first
            # packet the container sends already meets them.
            self.firewall.apply(name, policy_for(incus, settings, resolved, name))
        except CoiError as exc:
            if mode == "open":
                manager.say(f"warning: {exc} (open mode continues without rules)")
            else:
                raise CoiError(f"{exc} ({mode} mode fails closed)") from None

    def before_agent(self, ctx: LaunchContext) -> None:
        resolved = self.resolved.get(ctx.session.container)
        if resolved is not None:
            write_hosts(ctx.manager.incus, ctx.session.container, resolved)
        if getattr(ctx.manager.settings, "network_hosts", None):
            write_extra_hosts(ctx.manager.incus, ctx.manager.settings, ctx.session.container)

    def after_start(self, ctx: LaunchContext) -> None:
        name = ctx.session.container
        resolved = self.resolved.get(name)
        if resolved is None:
            return
        delay = refresh_seconds(resolved.min_ttl, ctx.manager.settings.refresh_interval_minutes)
        if delay is not None:
            spawn_refresher(name, ctx.session.workspace, delay)

    def container_ended(self, manager: SessionManager, name: str, removed: bool) -> None:
        with file_lock(f"network-{name}"):
            try:
                self.firewall.remove(name)
            except CoiError as exc:
                manager.say(f"warning: {exc}; 'coi clean --orphans' removes leftovers")
        self.resolved.pop(name, None)
        from coi_tui.network.hosts import save_runtime_hosts

        save_runtime_hosts(name, [])  # `coi hosts add` entries end with the session
        if removed:
            with suppress(OSError):
                cache_path(name).unlink()


HOOK = NetworkHook()


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
def refresh_allowlist(incus: Incus, settings: Settings, name: str) -> float | None:
    """Re-resolve the allowlist of a running container, swap its address set atomically and
    rewrite its /etc/hosts. Returns seconds until the next refresh, None to stop."""
    if check_mode(settings) != "allowlist":
        return None
    with file_lock(f"network-{name}"):
        try:
            if incus.status(name) != "Running":
                return None
        except InstanceNotFound:
            return None
        resolved = resolve_allowlist(name, settings.allowed_domains)
        Firewall().apply(name, policy_for(incus, settings, resolved, name))
        write_hosts(incus, name, resolved)
    return refresh_seconds(resolved.min_ttl, settings.refresh_interval_minutes)


def reapply_rules(incus: Incus, settings: Settings, name: str) -> str:
    """A running container's rules and /etc/hosts again, after its extra hosts changed.
    Uses the mode the container was started with. Returns that mode."""
    import dataclasses

    instance = incus.get_instance(name)
    mode = instance.config.get(MODE_KEY) or check_mode(settings)
    settings = dataclasses.replace(settings, network_mode=mode)
    with file_lock(f"network-{name}"):
        resolved = (
            resolve_allowlist(name, settings.allowed_domains) if mode == "allowlist" else None
        )
        if mode != "open" and "eth0" in instance.expanded_devices:
            Firewall().apply(name, policy_for(incus, settings, resolved, name))
        write_extra_hosts(incus, settings, name)
    return mode


def run_refresher(name: str, workspace: str, first_delay: float | None, poll: float = 5.0) -> None:
    """Loop until the container stops. The session supervisor may call this in a thread instead
    of spawn_refresher's process; it must not be both."""
    from coi_tui.config import load_settings

    settings = load_settings(Path(workspace))
    incus = Incus(settings.socket or None, settings.project)
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
            print(f"refresh failed: {exc}", file=sys.stderr, flush=True)
            delay = refresh_seconds(None, settings.refresh_interval_minutes)


def spawn_refresher(name: str, workspace: str, first_delay: float) -> None:
    """A detached process per allowlist session that exits when the container stops."""
    log = open(logs_dir() / f"{name}.network.log", "ab")  # noqa: SIM115
    subprocess.Popen(
        [sys.executable, "-m", "coi_tui.network.refresh", name, workspace, str(first_delay)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
        env=dict(os.environ),
        close_fds=True,
        cwd=workspace,
    )
    log.close()
