"""Host integration for every session: resource limits, extra mounts, environment
(forward_env by name + static [environment]), timezone, SSH agent forwarding, and what the agent
finds in its home (~/SANDBOX_CONTEXT.md, the tool's context file, merged settings files).

Nothing from the host reaches the container unless configured: the agent's environment is built
from scratch (see SessionManager.agent_env) and only the names in forward_env are copied.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import zoneinfo
from pathlib import Path

from coi_tui.config.profiles import read_context
from coi_tui.config.schema import parse_duration
from coi_tui.config.settings import Settings, check_mounts
from coi_tui.core.errors import CoiError
from coi_tui.core.paths import read_regular_text
from coi_tui.incus import IncusError, NotFound
from coi_tui.sessions.hookspec import LaunchContext, SessionHook
from coi_tui.sessions.store import all_sessions
from coi_tui.tools.base import CODE_HOME, SANDBOX_CONTEXT
from coi_tui.tools.context import (
    ContextFacts,
    apply_patch,
    context_json,
    render_context,
    with_managed_block,
)
from coi_tui.tools.credentials import HOST_FILE_LIMIT, host_file_copy

SANDBOX_CONTEXT_JSON = f"{CODE_HOME}/SANDBOX_CONTEXT.json"
SSH_DEVICE = "coi-ssh-agent"
SSH_SOCKET = "/tmp/ssh-agent.sock"
MOUNT_PREFIX = "coi-mount-"

# Instance config keys coi manages for limits (unset when no longer configured).
LIMIT_KEYS = (
    "limits.cpu",
    "limits.cpu.allowance",
    "limits.cpu.priority",
    "limits.memory",
    "limits.memory.enforce",
    "limits.memory.swap",
    "limits.processes",
    "limits.disk.priority",
    "user.coi.max_duration",
    "user.coi.auto_stop",
    "user.coi.stop_graceful",
    "environment.TZ",
)
ROOT_LIMIT_KEYS = ("limits.read", "limits.write", "limits.max", "size")


# ---------------------------------------------------------------------- pure parts
def limit_config(settings: Settings) -> dict[str, str]:
    """Incus instance config for [limits.*] (reference §9)."""
    out: dict[str, str] = {}
    if settings.limit_cpu_count:
        out["limits.cpu"] = settings.limit_cpu_count
    if settings.limit_cpu_allowance:
        out["limits.cpu.allowance"] = settings.limit_cpu_allowance
    if settings.limit_cpu_priority:
        out["limits.cpu.priority"] = str(settings.limit_cpu_priority)
    if settings.limit_memory:
        out["limits.memory"] = settings.limit_memory
        out["limits.memory.enforce"] = settings.limit_memory_enforce
        out["limits.memory.swap"] = settings.limit_memory_swap
    if settings.max_processes:
        out["limits.processes"] = str(settings.max_processes)
    if settings.limit_disk_priority:
        out["limits.disk.priority"] = str(settings.limit_disk_priority)
    seconds = parse_duration(settings.max_duration)
    if seconds:
        # The supervisor reads these from the instance: the session's own values.
        out["user.coi.max_duration"] = str(seconds)
        out["user.coi.auto_stop"] = "true" if settings.auto_stop else "false"
        out["user.coi.stop_graceful"] = "true" if settings.stop_graceful else "false"
    return out


def root_limits(settings: Settings) -> dict[str, str]:
    pairs = {
        "limits.read": settings.limit_disk_read,
        "limits.write": settings.limit_disk_write,
        "limits.max": settings.limit_disk_max,
        "size": settings.limit_disk_size,
    }
    return {key: value for key, value in pairs.items() if value}


def limit_summary(settings: Settings) -> list[str]:
    out = []
    if settings.limit_cpu_count:
        out.append(f"{settings.limit_cpu_count} CPUs")
    if settings.limit_cpu_allowance:
        out.append(f"CPU allowance {settings.limit_cpu_allowance}")
    if settings.limit_memory:
        out.append(f"{settings.limit_memory} memory")
    if settings.limit_disk_size:
        out.append(f"{settings.limit_disk_size} disk")
    if settings.max_processes:
        out.append(f"{settings.max_processes} processes")
    return out


def mount_devices(
    settings: Settings, workspace_device: dict[str, str]
) -> dict[str, dict[str, str]]:
    devices: dict[str, dict[str, str]] = {}
    for index, mount in enumerate(settings.mounts, 1):
        spec = {"type": "disk", "source": mount.host, "path": mount.container}
        if mount.readonly:
            spec["readonly"] = "true"
        shift = workspace_device.get("shift") == "true" if mount.shift is None else mount.shift
        if shift:
            spec["shift"] = "true"
        devices[f"{MOUNT_PREFIX}{index}"] = spec
    return devices


def check_mount_sources(settings: Settings, workspace: str) -> None:
    """A [[mounts]] source the agent can write to (inside the workspace, or inside another
    writable mount) is refused: Incus opens the path later than coi checks it, and another
    slot's agent could swap it for a link to any host directory in between."""
    writable = [os.path.realpath(workspace)] + [
        os.path.realpath(m.host) for m in settings.mounts if not m.readonly
    ]
    for mount in settings.mounts:
        real = os.path.realpath(mount.host)
        for top in writable:
            if real != top and real.startswith(top.rstrip("/") + "/"):
                raise CoiError(
                    f'mount source "{mount.host}" lies inside the workspace or another writable '
                    "mount, where an agent could swap it for a link to any host directory "
                    "before it is mounted; mount a path outside them"
                )


def agent_writable_roots(ctx: LaunchContext) -> list[str]:
    """Host directories some agent could write: this session's workspace and writable
    mounts, and the workspace of every coi container there is or session there was."""
    settings = ctx.manager.settings
    roots = {ctx.request.workspace, *(m.host for m in settings.mounts if not m.readonly)}
    roots.update(i.config.get("user.coi.workspace", "") for i in ctx.manager.coi_instances())
    roots.update(meta.workspace for _tool, meta in all_sessions())
    return sorted(os.path.realpath(root) for root in roots if root)


def host_timezone() -> str | None:
    """The host's IANA zone name, or None when it cannot be told."""
    candidates = [os.environ.get("TZ", "").lstrip(":")]
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text().strip())
    try:
        target = os.readlink("/etc/localtime")
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    for name in candidates:
        if name and valid_zone(name):
            return name
    return None


def valid_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def resolve_timezone(settings: Settings, say: object = None) -> str:
    if settings.timezone_mode == "utc":
        return "UTC"
    if settings.timezone_mode == "fixed":
        if not settings.timezone_name:
            raise CoiError('timezone.mode = "fixed" needs timezone.name (e.g. "Europe/Warsaw")')
        if not valid_zone(settings.timezone_name):
            raise CoiError(f'timezone.name: unknown time zone "{settings.timezone_name}"')
        return settings.timezone_name
    zone = host_timezone()
    if zone is None:
        if callable(say):
            say("warning: could not detect the host time zone; using UTC")
        return "UTC"
    return zone


def desired_config(settings: Settings, tz: str) -> dict[str, str]:
    out = limit_config(settings)
    out["environment.TZ"] = tz  # also for `coi container exec` and login shells
    return out


# ---------------------------------------------------------------------- the hook
class HostHook(SessionHook):
    def __init__(self) -> None:
        self.tz: dict[str, str] = {}  # container -> zone (resolved once per launch)

    def timezone(self, ctx: LaunchContext) -> str:
        name = ctx.session.container
        if name not in self.tz:
            self.tz[name] = resolve_timezone(ctx.manager.settings, ctx.manager.say)
        return self.tz[name]

    def prepare_instance(self, ctx: LaunchContext) -> None:
        settings = ctx.manager.settings
        check_mounts(settings.mounts, sources_exist=True)
        inside = ctx.session.mounted.rstrip("/") + "/"
        for mount in settings.mounts:  # /workspace itself is refused when the config loads
            target = os.path.normpath(mount.container)
            if target == ctx.session.mounted or target.startswith(inside):
                raise CoiError(f'cannot mount over or inside the workspace (got "{target}")')
        check_mount_sources(settings, ctx.request.workspace)
        ctx.config.update(desired_config(settings, self.timezone(ctx)))
        ctx.devices.update(mount_devices(settings, ctx.devices.get("workspace", {})))
        disk = root_limits(settings)
        if disk:
            root = ctx.devices.get("root") or {"type": "disk", "path": "/"}
            if "pool" not in root:
                pool = ctx.manager.storage_pool()
                if not pool:
                    raise CoiError("[limits.disk] needs a storage pool: set container.storage_pool")
                root["pool"] = pool
            ctx.devices["root"] = {**root, **disk}

    def before_start(self, ctx: LaunchContext) -> None:
        settings = ctx.manager.settings
        if settings.ssh_forward_agent:
            host_socket()  # fail before the container starts, with the reason
        if not ctx.session.reused:
            return
        # A reused persistent container gets this session's limits and mounts.
        check_mounts(settings.mounts, sources_exist=True)
        check_mount_sources(settings, ctx.request.workspace)
        incus, name = ctx.manager.incus, ctx.session.container
        instance = incus.get_instance(name)
        wanted = desired_config(settings, self.timezone(ctx))
        config: dict[str, str | None] = {key: wanted.get(key) for key in LIMIT_KEYS}
        devices: dict[str, dict[str, str] | None] = {
            dev: None for dev in instance.devices if dev.startswith(MOUNT_PREFIX)
        }
        devices.update(mount_devices(settings, instance.devices.get("workspace", {})))
        root = instance.devices.get("root")
        if root is not None:
            spec = {k: v for k, v in root.items() if k not in ROOT_LIMIT_KEYS}
            devices["root"] = {**spec, **root_limits(settings)}
        incus.update_instance(name, config=config, devices=devices)

    def agent_env(self, ctx: LaunchContext, env: dict[str, str]) -> None:
        settings = ctx.manager.settings
        env.update(settings.environment)
        for name in settings.forward_env:
            if name in os.environ:
                env[name] = os.environ[name]  # read now, never stored
            else:
                ctx.manager.say(f'forward_env variable "{name}" is not set on host, skipping')
        env["TZ"] = self.timezone(ctx)
        if settings.ssh_forward_agent:
            env["SSH_AUTH_SOCK"] = SSH_SOCKET
        if ctx.session.tool.context_file == ".claude/CLAUDE.md":  # claude and its double
            if settings.claude_model:
                env["ANTHROPIC_MODEL"] = settings.claude_model
            effort = effort_level(settings)
            if effort:
                env["CLAUDE_CODE_EFFORT_LEVEL"] = effort

    def before_agent(self, ctx: LaunchContext) -> None:
        settings = ctx.manager.settings
        if settings.ssh_forward_agent:
            self.forward_ssh_agent(ctx)
        home = HomeWriter(ctx)
        if not ctx.session.reused and ctx.session.resume_meta is None:
            self.copy_host_files(ctx, home)  # a resumed session has its own saved copy
        facts = self.facts(ctx)
        # [tool] context_file / context_json_file replace the built-in text (host files).
        custom = str(getattr(settings, "context_file", "") or "")
        text = read_host_file(custom, "context_file") if custom else render_context(facts)
        home.write(SANDBOX_CONTEXT, text)
        if getattr(settings, "context_json", True):
            custom = str(getattr(settings, "context_json_file", "") or "")
            data = (
                read_host_file(custom, "context_json_file")
                if custom
                else json.dumps(context_json(facts), indent=2) + "\n"
            )
            home.write(SANDBOX_CONTEXT_JSON, data)
        tool = ctx.session.tool
        context_path = SANDBOX_CONTEXT if settings.auto_context else None
        if settings.auto_context and tool.context_file:
            path = f"{CODE_HOME}/{tool.context_file}"
            home.write(path, with_managed_block(home.read(path) or "", text))
        patches = tool.settings_patches(
            settings.permission_mode, context_path, effort_level=effort_level(settings)
        )
        for patch in patches:
            path = f"{CODE_HOME}/{patch.path}"
            current = home.read(path)
            try:
                data = json.loads(current) if current and current.strip() else {}
                if not isinstance(data, dict):
                    raise ValueError("not an object")
            except ValueError:
                # Never overwrite a file we cannot merge into.
                ctx.manager.say(f"warning: {path} is not a JSON object; left unchanged")
                continue
            merged = apply_patch(data, patch)
            if merged != data or current is None:
                home.write(path, json.dumps(merged, indent=2) + "\n")

    def copy_host_files(self, ctx: LaunchContext, home: HomeWriter) -> None:
        """The agent's own config from the host user's home (COI copies it too), before the
        sandbox's settings are merged over it, so the user's keys survive; what looks secret
        stays out (tools/credentials.host_file_copy), and so does a file whose real location
        an agent could write (a dotfiles link into a workspace: it could point it anywhere)."""
        say = ctx.manager.say
        writable: list[str] | None = None  # asked only when a host file exists
        for relative in ctx.session.tool.host_files:
            source = Path.home() / relative
            if not os.path.lexists(source):
                continue
            if writable is None:
                writable = agent_writable_roots(ctx)
            real = os.path.realpath(source)
            if any(real == top or real.startswith(top.rstrip("/") + "/") for top in writable):
                say(f"~/{relative} not copied: it lies in a directory an agent can write")
                continue
            try:
                text = read_regular_text(Path(real), HOST_FILE_LIMIT)
                copy, dropped = host_file_copy(relative, text)
            except (OSError, UnicodeDecodeError, ValueError) as exc:
                say(f"warning: ~/{relative} not copied: {getattr(exc, 'strerror', '') or exc}")
                continue
            if dropped:
                what = "without" if copy is not None else "not copied, for"
                say(
                    f"~/{relative}: {what} {', '.join(dropped)} (secrets stay on the host; "
                    "forward_env or [[credentials]] pass one in on purpose)"
                )
            if copy is not None:
                home.write(f"{CODE_HOME}/{relative}", copy)

    def forward_ssh_agent(self, ctx: LaunchContext) -> None:
        """A proxy device from the host agent's socket to /tmp/ssh-agent.sock. Added once the
        container has booted, so the boot-time /tmp cleanup cannot remove the socket."""
        incus, name = ctx.manager.incus, ctx.session.container
        if not ctx.interactive:
            ctx.manager.wait_ready(name)
        spec = {
            "type": "proxy",
            "connect": f"unix:{host_socket()}",
            "listen": f"unix:{SSH_SOCKET}",
            "bind": "container",
            "uid": str(ctx.manager.settings.code_uid),
            "gid": str(ctx.manager.settings.code_uid),
            "mode": "0600",
        }
        if SSH_DEVICE in incus.get_instance(name).devices:
            incus.remove_device(name, SSH_DEVICE)
        incus.add_device(name, SSH_DEVICE, spec)

    def facts(self, ctx: LaunchContext) -> ContextFacts:
        settings = ctx.manager.settings
        session = ctx.session
        context = ""
        if settings.profile_context:  # a regular file, size-capped, no symlink swapped in
            context = read_context(settings.profile_context)
        protected = (
            []
            if settings.disable_protection
            else [
                *settings.protected_paths,
                *settings.additional_protected_paths,
            ]
        )
        return ContextFacts(
            container=session.container,
            tool=session.tool.name,
            workspace_host=session.workspace,
            workspace=session.mounted,
            persistent=session.persistent,
            network_mode=settings.network_mode,
            ssh_agent=settings.ssh_forward_agent,
            timezone=self.timezone(ctx),
            limits=limit_summary(settings),
            protected_paths=protected,
            forwarded_env=[n for n in settings.forward_env if n in os.environ],
            mounts=[(m.container, m.readonly) for m in settings.mounts],
            max_duration=settings.max_duration,
            profile=settings.profile,
            profile_context=context,
            docker=bool(getattr(settings, "docker", True)),
            cpu_limit=settings.limit_cpu_count,
            memory_limit=settings.limit_memory,
            allowed_domains=list(getattr(settings, "allowed_domains", []) or []),
        )


def read_host_file(path: str, key: str) -> str:
    try:
        return Path(path).expanduser().read_text(encoding="utf-8")
    except OSError as exc:
        raise CoiError(f"[tool] {key} {path}: cannot read: {exc.strerror or exc}") from None


def effort_level(settings: Settings) -> str:
    """[tool.claude] effort_level, "" when unset (read defensively: older settings lack it)."""
    return str(getattr(settings, "claude_effort_level", "") or "")


def host_socket() -> str:
    sock = os.environ.get("SSH_AUTH_SOCK", "")
    if not sock:
        raise CoiError("ssh.forward_agent is on, but SSH_AUTH_SOCK is not set on the host")
    if not os.path.exists(sock):
        raise CoiError(f"ssh.forward_agent is on, but SSH_AUTH_SOCK ({sock}) does not exist")
    return os.path.abspath(sock)


class HomeWriter:
    """Files in the code user's home, owned by the code user."""

    def __init__(self, ctx: LaunchContext) -> None:
        self.manager = ctx.manager
        self.name = ctx.session.container
        self.uid = ctx.manager.settings.code_uid
        self.made: set[str] = set()

    def read(self, path: str) -> str | None:
        try:
            return self.manager.incus.pull_file(self.name, path).decode("utf-8", "replace")
        except NotFound:
            return None
        except IncusError as exc:
            if "directory" in str(exc):
                raise CoiError(f"{path} in the container is a directory, not a file") from None
            raise

    def write(self, path: str, text: str) -> None:
        parent = posixpath.dirname(path)
        if not parent.startswith(CODE_HOME + "/") and parent != CODE_HOME:
            result = self.manager.exec_as_code(self.name, ["mkdir", "-p", parent])
            if not getattr(result, "ok", False):
                raise CoiError(f"could not create {parent} in the container")
        elif parent != CODE_HOME and parent not in self.made:
            # Create the missing directories through the files API (owned by the code user):
            # a few milliseconds each, where an exec of `mkdir -p` costs ~0.1 s.
            relative = posixpath.relpath(parent, CODE_HOME)
            current = CODE_HOME
            for part in relative.split("/"):
                current = f"{current}/{part}"
                if current not in self.made:
                    self.manager.incus.make_dir(self.name, current, uid=self.uid, gid=self.uid)
                    self.made.add(current)
        self.manager.incus.push_file(
            self.name, path, text.encode("utf-8"), uid=self.uid, gid=self.uid, mode=0o644
        )


HOOK = HostHook()
