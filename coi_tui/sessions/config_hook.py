"""The session side of config keys that have no other home:

- `[defaults.env_commands]` (a profile's `[env_commands]`): `NAME = "host command"`; the
  command runs on the host (`sh -c`, in the workspace) when the agent starts, and its trimmed
  stdout becomes NAME in the agent's environment. A failure or a timeout
  (`env_command_timeout`, default 30s) aborts the launch; values are never stored.
- `[[credentials]]` with host + container: the host file is pushed (never mounted) into the
  container, owned by the code user with `mode` (default 0600). Catalog bundles
  (`bundle = "..."`) are not known to coi-tui: each is skipped with a warning.
- `[[sockets]]`: a host unix socket proxied to `container` (an Incus proxy device added once
  the container has booted, replaced on re-entry), owned by the code user; `env` names a
  variable set to the container path. A missing host socket is skipped with a warning.
- `[[ports.map]]`: each entry publishes a container port on the host through an Incus proxy
  device `coi-port-<name>` (bind=host, userspace, no NAT: isolation is unchanged), listening
  on `listen` (default 127.0.0.1) port `host` (0: a free port, chosen at create time).
  `[ports] pool` is refused (config/schema.py).
- `[limits.disk] tmpfs_size`: /tmp becomes a RAM tmpfs of that size, mounted by container root
  at each start (a container's own mount, as Incus has no sized tmpfs device here); unset, /tmp
  stays on the root disk.
- `[tool] pre_launch`: commands run in the container as the code user in /workspace, in order,
  just before the agent (or `coi run`'s command) starts, each bounded by PRE_LAUNCH_TIMEOUT; a
  failure aborts the launch with the command and its last line of output.

Untrusted (project) config never gets here unapproved: config/trust.py strips env_commands and
gates sockets and credentials at load."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import signal
import socket
import subprocess
from pathlib import Path

from coi_tui.config.schema import parse_duration, size_bytes
from coi_tui.core.errors import CoiError
from coi_tui.core.paths import read_regular
from coi_tui.core.text import clean
from coi_tui.incus import ExecResult, Incus, IncusError
from coi_tui.sessions.hookspec import LaunchContext, SessionHook
from coi_tui.tools.base import CODE_HOME
from coi_tui.tools.credentials import BUNDLES, HOST_FILE_LIMIT

DEFAULT_ENV_TIMEOUT = 30
PRE_LAUNCH_TIMEOUT = 300  # seconds, per command (the reference's five minutes)


def socket_device(index: int) -> str:
    return f"coi-socket-{index}"


def free_port(address: str) -> int:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def port_devices(entries: list[dict[str, object]]) -> dict[str, dict[str, str]]:
    devices = {}
    for entry in entries:
        listen = str(entry.get("listen") or "127.0.0.1")
        host = int(entry.get("host") or 0) or free_port(listen)  # type: ignore[call-overload]
        shown = f"[{listen}]" if ":" in listen else listen
        devices[f"coi-port-{entry['name']}"] = {
            "type": "proxy",
            "listen": f"tcp:{shown}:{host}",
            "connect": f"tcp:127.0.0.1:{entry['container']}",
            "bind": "host",
        }
    return devices


def last_line(result: ExecResult) -> str:
    lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
    return clean(lines[-1], 200) if lines else "no output"  # container text: escapes removed


def run_env_command(name: str, command: str, timeout: float, cwd: str) -> str:
    try:
        process = subprocess.Popen(
            ["sh", "-c", command],
            cwd=cwd if os.path.isdir(cwd) else None,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,  # a timeout ends the command and everything it started
        )
    except OSError as exc:
        raise CoiError(f'env_commands {name}: cannot run "{command}": {exc.strerror}') from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CoiError(
            f'env_commands {name}: "{command}" did not finish within {timeout:g}s '
            "([defaults] env_command_timeout)"
        ) from None
    if process.returncode != 0:
        detail = stderr.strip().splitlines()[-1:] or [""]
        raise CoiError(
            f'env_commands {name}: "{command}" failed with exit {process.returncode}'
            + (f": {detail[0]}" if detail[0] else "")
        )
    return stdout.strip()


class ConfigHook(SessionHook):
    def prepare_instance(self, ctx: LaunchContext) -> None:
        ctx.devices.update(port_devices(getattr(ctx.manager.settings, "port_maps", [])))

    def agent_env(self, ctx: LaunchContext, env: dict[str, str]) -> None:
        settings = ctx.manager.settings
        for entry in getattr(settings, "sockets", []):
            if entry.get("env"):
                env[entry["env"]] = entry["container"]
        commands = getattr(settings, "env_commands", {})
        if commands:
            timeout = parse_duration(settings.env_command_timeout) or DEFAULT_ENV_TIMEOUT
            for name, command in commands.items():
                env[name] = run_env_command(name, command, timeout, ctx.request.workspace)

    def before_agent(self, ctx: LaunchContext) -> None:
        settings = ctx.manager.settings
        if settings.limit_disk_tmpfs_size:
            self.size_tmp(ctx, size_bytes(settings.limit_disk_tmpfs_size))
        for command in settings.pre_launch:
            self.pre_launch(ctx, command)
        credentials = getattr(settings, "credentials", [])
        sockets = getattr(settings, "sockets", [])
        if credentials:
            self.push_credentials(ctx, credentials)
        if sockets:
            self.add_sockets(ctx, sockets)

    def size_tmp(self, ctx: LaunchContext, size: int) -> None:
        script = (
            'if [ "$(findmnt -n -o FSTYPE /tmp)" = tmpfs ]; then '
            f"mount -o remount,size={size} /tmp; "
            f"else mount -t tmpfs -o size={size},mode=1777,nosuid,nodev tmpfs /tmp; fi"
        )
        done = ctx.manager.incus.exec_capture(ctx.session.container, ["sh", "-c", script])
        if not done.ok:
            raise CoiError(f"[limits.disk] tmpfs_size: could not size /tmp: {last_line(done)}")

    def pre_launch(self, ctx: LaunchContext, command: str) -> None:
        ctx.manager.say(f"pre_launch: {command}")
        done = ctx.manager.exec_as_code(
            ctx.session.container, ["timeout", str(PRE_LAUNCH_TIMEOUT), "sh", "-c", command]
        )
        if done.exit_code == 124:
            raise CoiError(f"pre_launch '{command}' took longer than {PRE_LAUNCH_TIMEOUT}s")
        if not done.ok:
            raise CoiError(
                f"pre_launch '{command}' failed (exit {done.exit_code}): {last_line(done)}"
            )

    def push_credentials(self, ctx: LaunchContext, entries: list[dict[str, str]]) -> None:
        manager, name = ctx.manager, ctx.session.container
        uid = manager.settings.code_uid
        for entry in entries:
            if entry.get("bundle"):
                self.push_bundle(ctx, entry["bundle"])
                continue
            source = Path(entry["host"]).expanduser()
            if not source.is_absolute():
                source = Path(ctx.request.workspace) / source
            try:
                content = source.read_bytes()
            except OSError as exc:
                raise CoiError(f"[[credentials]] {source}: cannot read: {exc.strerror}") from None
            target = entry["container"]
            self.make_parent(ctx, target)
            manager.incus.push_file(
                name, target, content, uid=uid, gid=uid, mode=int(entry.get("mode", "0600"), 8)
            )

    def push_bundle(self, ctx: LaunchContext, bundle: str) -> None:
        """An agent's login files from the host user's home (tools/credentials.BUNDLES),
        mode 0600; a JSON state file is merged over what the image holds, the host's keys
        winning (claude's ~/.claude.json carries the image's onboarding flags)."""
        manager, name = ctx.manager, ctx.session.container
        uid = manager.settings.code_uid
        manager.say(f"Copying {bundle} credentials from the host")
        for relative in BUNDLES[bundle]:
            try:
                content = read_regular(Path.home() / relative, HOST_FILE_LIMIT)
            except FileNotFoundError:
                manager.say(f"  - Skipping {relative} (not found on host)")
                continue
            except OSError as exc:
                raise CoiError(
                    f"[[credentials]] ~/{relative}: cannot read: {exc.strerror}"
                ) from None
            target = f"{CODE_HOME}/{relative}"
            if relative.endswith(".json") and "/" not in relative:
                content = merged_state(manager.incus, name, target, content)
            self.make_parent(ctx, target)
            manager.incus.push_file(name, target, content, uid=uid, gid=uid, mode=0o600)

    def make_parent(self, ctx: LaunchContext, target: str) -> None:
        manager, name = ctx.manager, ctx.session.container
        uid = manager.settings.code_uid
        parent = posixpath.dirname(target)
        if parent == CODE_HOME or parent.startswith(CODE_HOME + "/"):
            current = CODE_HOME
            for part in posixpath.relpath(parent, CODE_HOME).split("/"):
                if part in ("", "."):
                    continue
                current = f"{current}/{part}"
                manager.incus.make_dir(name, current, uid=uid, gid=uid, mode=0o700)
        elif parent != "/":
            result = manager.incus.exec_capture(name, ["mkdir", "-p", parent])
            if not result.ok:
                raise CoiError(f"could not create {parent} in the container")

    def add_sockets(self, ctx: LaunchContext, entries: list[dict[str, str]]) -> None:
        """Added after boot, like the SSH agent: /run and /tmp are set up by systemd at boot."""
        manager, name = ctx.manager, ctx.session.container
        if not ctx.interactive:
            manager.wait_ready(name)
        uid = str(manager.settings.code_uid)
        devices = manager.incus.get_instance(name).devices
        for index, entry in enumerate(entries):
            device = socket_device(index)
            if device in devices:
                manager.incus.remove_device(name, device)
            host = os.path.expanduser(entry["host"])
            if not os.path.exists(host):
                manager.say(f"[[sockets]] {host} does not exist on the host; skipped")
                continue
            self.make_parent(ctx, entry["container"])
            spec = {
                "type": "proxy",
                "connect": f"unix:{os.path.abspath(host)}",
                "listen": f"unix:{entry['container']}",
                "bind": "container",
                "uid": uid,
                "gid": uid,
                "mode": "0660",
            }
            manager.incus.add_device(name, device, spec)


HOOK = ConfigHook()


def merged_state(incus: Incus, name: str, target: str, host: bytes) -> bytes:
    """A home-level JSON state file: the container's keys, then the host's over them."""
    try:
        theirs = json.loads(host)
        ours = json.loads(incus.pull_file(name, target))
    except (ValueError, IncusError):
        return host
    if not isinstance(theirs, dict) or not isinstance(ours, dict):
        return host
    return (json.dumps({**ours, **theirs}, indent=2) + "\n").encode()
