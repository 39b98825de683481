"""Network isolation as a session hook: NIC hardening before create, rules before start, the
allowlist's /etc/hosts before the agent, removal when the container ends. The logic it calls
lives in network/isolation.py."""

from __future__ import annotations

from contextlib import suppress

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import file_lock
from coi_tui.incus import Incus
from coi_tui.network.egress.service import remove_policy
from coi_tui.network.firewall import Firewall, iface_for
from coi_tui.network.hosts import save_runtime_hosts
from coi_tui.network.isolation import (
    MODE_KEY,
    NIC_HARDENING,
    allowlist_entries,
    cache_path,
    check_mode,
    network_log,
    policy_for,
    policy_summary,
    proxied,
    resolve_allowlist,
    spawn_refresher,
    write_extra_hosts,
    write_hosts,
)
from coi_tui.network.resolve import Resolved, refresh_seconds
from coi_tui.sessions.hookspec import LaunchContext, SessionHook, SessionHost


class NetworkHook(SessionHook):
    def __init__(self) -> None:
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
            resolved = resolve_allowlist(name, allowlist_entries(settings))
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
            firewall = Firewall(use_sudo=settings.use_sudo)
            firewall.apply(name, policy_for(incus, settings, resolved, name))
            network_log(settings, name, f"rules applied {policy_summary(mode, resolved)}")
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
        if resolved is None or proxied(ctx.manager.settings):
            return  # through the proxy names are resolved at each query: nothing to refresh
        delay = refresh_seconds(resolved.min_ttl, ctx.manager.settings.refresh_interval_minutes)
        if delay is not None:
            remote = ctx.manager.incus.remote
            spawn_refresher(name, ctx.session.workspace, delay, remote.name if remote else None)

    def container_ended(self, manager: SessionHost, name: str, removed: bool) -> None:
        with file_lock(f"network-{name}"):
            try:
                Firewall(use_sudo=manager.settings.use_sudo).remove(name)
                network_log(manager.settings, name, "rules removed")
            except CoiError as exc:
                manager.say(f"warning: {exc}; 'coi clean --orphans' removes leftovers")
        self.resolved.pop(name, None)
        remove_policy(name)  # the proxy forgets the container's address
        save_runtime_hosts(name, [])  # `coi hosts add` entries end with the session
        if removed:
            with suppress(OSError):
                cache_path(name).unlink()


HOOK = NetworkHook()
