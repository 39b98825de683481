"""Session hook: plant decoy credentials (monitor/canary.py) in the container before the agent
starts, when `[monitoring] canaries = true` (on in the `hardened` profile), and record them in
~/.coi/canaries/<container>.json for the monitor daemon.

Planted over the Incus file API (no process runs in the container, so no command line names
them), owned by the code user, mode 0600 in 0700 folders. A kind is skipped, never forced:
- when its path, or a folder on the way, already exists as something other than a folder
  (a real credential pushed by [[credentials]] or baked into the image wins; a symlink is
  never written through);
- when its path is at or under a disk device (the workspace, a mounted host folder).
A persistent container started again keeps the canaries it has (same instance, same file).
A failure is a warning: the session starts anyway. The registry goes when the container does.
"""

from __future__ import annotations

import json
import os
import posixpath
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home
from coi_tui.incus import NotFound
from coi_tui.monitor import canary
from coi_tui.sessions.hookspec import LaunchContext, SessionHook, SessionHost


def mount_points(devices: dict[str, dict[str, str]]) -> list[str]:
    """Container paths where a disk device is mounted (the root disk aside)."""
    return [
        posixpath.normpath(spec["path"])
        for spec in devices.values()
        if spec.get("type") == "disk" and spec.get("path") and spec.get("path") != "/"
    ]


def under_mount(path: str, mounts: Iterable[str]) -> str:
    """The mount point `path` is at or under, or ""."""
    for mount in mounts:
        if path == mount or path.startswith(mount.rstrip("/") + "/"):
            return mount
    return ""


def _kind_of(incus: Any, name: str, path: str) -> str:
    """'file', 'directory', 'symlink'... of a container path, "" when it does not exist."""
    try:
        return str(incus.stat_path(name, path)[0])
    except NotFound:
        return ""


def previous(home: Path, name: str, instance: str) -> dict[str, canary.Canary]:
    """This same container's canaries from an earlier start (a persistent slot)."""
    try:
        registry = canary.read_registry(home, name, (os.getuid(), os.getgid()))
    except (OSError, ValueError):
        return {}
    if not instance or registry.instance != instance:
        return {}
    return {kind: canary.Canary(kind, path, "", values) for kind, path, values in registry.entries}


def folders_of(path: str) -> list[str]:
    """The folders from the code user's home down to the one holding `path`."""
    out = []
    folder = posixpath.dirname(path)
    while folder.startswith(canary.CODE_HOME + "/"):
        out.insert(0, folder)
        folder = posixpath.dirname(folder)
    return [canary.CODE_HOME, *out]


def plant(
    incus: Any,
    name: str,
    kinds: Iterable[str],
    *,
    uid: int = 1000,
    home: Path | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> list[canary.Canary]:
    """Plant fresh canaries of `kinds` in container `name` and write its registry first (so
    the daemon knows the values before the files exist). Returns what is watched."""
    home = home or coi_home()
    instance = incus.get_instance(name)
    uuid = instance.config.get("volatile.uuid", "")
    mounts = mount_points(instance.expanded_devices or instance.devices)
    earlier = previous(home, name, uuid)
    kinds_seen: dict[str, str] = {}  # container path -> its type ("" missing), asked once

    def kind_of(path: str) -> str:
        if path not in kinds_seen:
            kinds_seen[path] = _kind_of(incus, name, path)
        return kinds_seen[path]

    watched: list[canary.Canary] = []
    fresh: list[canary.Canary] = []
    for kind in dict.fromkeys(kinds):
        path = canary.BY_KIND[kind].path
        mount = under_mount(path, mounts)
        if mount:
            say(f"canary {kind}: {path} is under the mount {mount}; not planted")
            continue
        blocked, parent_exists = "", True
        for folder in folders_of(path):
            found = kind_of(folder)
            if not found:
                parent_exists = False  # so is everything below it
                break
            if found != "directory":
                blocked = f"{folder} is a {found}"  # never written through
                break
        if not blocked and parent_exists and kind_of(path):
            if kind in earlier:
                watched.append(earlier[kind])  # ours, from this container's earlier start
                continue
            blocked = f"{path} exists (a real credential wins)"
        if blocked:
            say(f"canary {kind}: {blocked}; not planted")
            continue
        fresh.append(canary.make_canary(kind))
    watched += fresh
    registry = canary.registry_path(home, name)
    registry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(registry, canary.registry_text(name, uuid, watched))
    for item in fresh:
        for folder in folders_of(item.path):
            if not kind_of(folder):
                incus.make_dir(name, folder, uid=uid, gid=uid, mode=0o700)
                kinds_seen[folder] = "directory"
        incus.push_file(name, item.path, item.content.encode(), uid=uid, gid=uid, mode=0o600)
    return watched


class CanaryHook(SessionHook):
    def before_agent(self, ctx: LaunchContext) -> None:
        manager = ctx.manager
        settings = manager.settings
        if not getattr(settings, "monitoring_canaries", False):
            return
        if manager.incus.remote is not None:
            return  # the monitor watching a remote's containers runs on that host
        kinds = list(getattr(settings, "monitoring_canary_kinds", canary.CANARY_KINDS))
        if not getattr(settings, "monitoring_enabled", False):
            manager.say(
                "warning: [monitoring] canaries is on but enabled is off: the decoys are "
                "planted and nothing watches them"
            )
        try:
            plant(
                manager.incus,
                ctx.session.container,
                kinds,
                uid=settings.code_uid,
                say=manager.say,
            )
        except Exception as exc:  # decoys are a bonus: never a failed session start
            detail = str(exc) or type(exc).__name__
            manager.say(f"warning: canaries not planted: {json.dumps(detail)[1:-1][:200]}")

    def container_ended(self, manager: SessionHost, name: str, removed: bool) -> None:
        if removed:
            canary.remove_registry(coi_home(), name)


HOOK = CanaryHook()
