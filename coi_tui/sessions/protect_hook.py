"""Protected paths: `[security] protected_paths` (by default `.git/hooks`, `.git/config`,
`.git/config.worktree`, `.git/info/attributes`, `.husky`, `.vscode`, `.coi`,
`.claude/settings.json`, `.claude/settings.local.json`) plus `additional_protected_paths`, minus
`writable_paths` (and `.git/hooks` when `[git] writable_hooks`), are mounted read-only over the
workspace, so the agent can change the code but not what runs it on the host (git hooks and
config, editor tasks, agent settings, coi's own project config).

Each path may be a file or a directory; Incus bind-mounts either. A path missing from the
workspace is skipped, except the git placeholders below: in a real `.git` directory a missing
`.git/hooks`, `.git/config.worktree` or `.git/info/attributes` is created empty (inert for git)
and protected, so the agent cannot create one that git on the host would then run or obey.
Per-worktree `.git/worktrees/*/config.worktree` files are found and protected too. Symlinks, and
paths whose real location is outside the workspace, are never mounted.

The mounts' sources are coi-owned copies (~/.coi/protect/<container>/), read without following
any link: Incus resolves a source path later than coi checks it, and another slot's agent could
swap a link in between (a protected `.claude` turned into a link to ~/.ssh would mount the host's
keys). Container root can unmount these mounts: with `[security] host_immutable` (the default)
the workspace's paths are also immutable on the host while the session runs (immutable.py), and
the host-side guard (workspace_guard.py) keeps the promise after the session either way.

Secret masking: each match of a `[security] secret_paths` glob (workspace-relative; `**`
recurses) is covered by an empty read-only file or directory from ~/.coi/masks, so its content
is neither visible nor changeable inside. A protected path inside a masked one is left to the
mask. More than MAX_MASKS matches is an error (fail closed) rather than a partial mask."""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import stat
from pathlib import Path

from coi_tui.config import Settings
from coi_tui.core.errors import CoiError
from coi_tui.core.paths import coi_home
from coi_tui.sessions import immutable
from coi_tui.sessions.hookspec import LaunchContext, SessionHook, SessionHost
from coi_tui.sessions.workspace_guard import list_dir, open_dir, parent_of, read_file, split
from coi_tui.tools.base import WORKSPACE

GIT_HOOKS = ".git/hooks"
# Missing git paths created empty (True: a directory) so they can be protected.
GIT_PLACEHOLDERS = {GIT_HOOKS: True, ".git/config.worktree": False, ".git/info/attributes": False}
MAX_DEVICE_NAME = 60
MAX_MASKS = 64
MAX_COPY = 64 << 20  # bytes of protected files copied per session
MAX_COPY_ENTRIES = 20_000


def clean(path: str) -> str:
    """Workspace-relative, normalised; "" for a path that leaves the workspace."""
    norm = os.path.normpath(path).lstrip("/")
    return "" if norm in ("", ".") or norm == ".." or norm.startswith("../") else norm


def protected_paths(settings: Settings) -> list[str]:
    if settings.disable_protection:
        return []
    writable = {clean(p) for p in getattr(settings, "writable_paths", [])}
    if getattr(settings, "git_writable_hooks", False):
        writable.add(GIT_HOOKS)
    seen: list[str] = []
    for path in [*settings.protected_paths, *settings.additional_protected_paths]:
        norm = clean(path)
        if norm and norm not in seen and norm not in writable:
            seen.append(norm)
    return seen


def device_name(path: str, prefix: str = "protect-") -> str:
    name = prefix + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
    if len(name) > MAX_DEVICE_NAME:  # keep it unique and within Incus's limits
        digest = hashlib.sha256(path.encode()).hexdigest()[:8]
        name = f"{name[: MAX_DEVICE_NAME - 9]}-{digest}"
    return name


def inside(workspace: str, source: str) -> bool:
    real_ws = os.path.realpath(workspace)
    real = os.path.realpath(source)
    return real == real_ws or real.startswith(real_ws + os.sep)


def materialise(workspace: str, path: str) -> None:
    """Create a missing git placeholder, only inside a real (not symlinked) .git directory."""
    git = os.path.join(workspace, ".git")
    if path not in GIT_PLACEHOLDERS or os.path.islink(git) or not os.path.isdir(git):
        return
    target = os.path.join(workspace, path)
    if os.path.lexists(target) or not inside(workspace, os.path.dirname(target)):
        return
    try:
        if GIT_PLACEHOLDERS[path]:
            os.makedirs(target, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "x", encoding="utf-8"):
                pass
    except OSError:
        pass  # a read-only workspace: nothing can be created inside it either


def session_paths(workspace: str, settings: Settings) -> list[str]:
    """The protected paths that exist in this workspace (placeholders created first)."""
    paths = protected_paths(settings)
    if not paths:
        return []
    git = os.path.join(workspace, ".git")
    if ".git/config.worktree" in paths and os.path.isdir(git) and not os.path.islink(git):
        for found in sorted(glob.glob(os.path.join(git, "worktrees", "*", "config.worktree"))):
            rel = os.path.relpath(found, workspace)
            if rel not in paths:
                paths.append(rel)
    out = []
    for path in paths:
        materialise(workspace, path)
        source = os.path.join(workspace, path)
        # Never follow a symlink out of the workspace: protect only real files and dirs.
        if os.path.islink(source) or not os.path.exists(source):
            continue
        if not inside(workspace, source):
            continue
        out.append(path)
    return out


def secret_matches(workspace: str, patterns: list[str]) -> list[str]:
    """Workspace-relative paths matched by the secret_paths globs, outermost only."""
    found: set[str] = set()
    for pattern in patterns:
        norm = clean(pattern)
        if not norm:
            continue
        for match in glob.glob(
            os.path.join(glob.escape(workspace), norm), recursive=True, include_hidden=True
        ):
            rel = clean(os.path.relpath(match, workspace))
            if rel and not os.path.islink(match) and inside(workspace, match):
                found.add(rel)
    outermost: list[str] = []
    for rel in sorted(found):
        if not any(rel.startswith(top + "/") for top in outermost):
            outermost.append(rel)
    if len(outermost) > MAX_MASKS:
        raise CoiError(
            f"[security] secret_paths match {len(outermost)} paths in {workspace}; at most "
            f"{MAX_MASKS} can be masked (narrow the globs, e.g. mask a directory)"
        )
    return outermost


def mask_sources(home: Path | None = None) -> tuple[str, str]:
    """(empty file, empty directory) on the host, read-only, mounted over secrets."""
    masks = (home or coi_home()) / "masks"
    masks.mkdir(parents=True, exist_ok=True)
    empty_file, empty_dir = masks / "empty", masks / "empty.d"
    if not empty_file.is_file():
        empty_file.write_bytes(b"")
    empty_dir.mkdir(exist_ok=True)
    empty_file.chmod(0o444)
    empty_dir.chmod(0o555)
    return str(empty_file), str(empty_dir)


def copies_dir(container: str, home: Path | None = None) -> Path:
    return (home or coi_home()) / "protect" / container


def snapshot(workspace: str, path: str, dest: Path, budget: list[int] | None = None) -> bool:
    """Copy workspace/path (a file or a tree) to dest, never through a link: links and
    special files inside are left out. False when the path is missing or is a link.
    `budget` ([bytes, entries]) is shared by one session's paths."""
    budget = budget if budget is not None else [MAX_COPY, MAX_COPY_ENTRIES]
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        parts = split(path)
        try:
            parent = open_dir(root, parts[:-1])
        except OSError:
            return False
        try:
            kind = {name: k for name, k, _ in list_dir(parent)}.get(parts[-1])
        finally:
            os.close(parent)
        if kind == "file":
            copy_file(root, path, dest, budget)
            return True
        if kind != "dir":
            return False
        pending = [(path, dest)]
        while pending:
            rel, target = pending.pop()
            target.mkdir(parents=True, exist_ok=True)
            fd = open_dir(root, split(rel))
            try:
                entries = list_dir(fd)
            finally:
                os.close(fd)
            for name, entry_kind, _ in entries:
                budget[1] -= 1
                if budget[1] < 0:
                    raise CoiError(
                        f"protected path {path} has more than {MAX_COPY_ENTRIES} entries"
                    )
                if entry_kind == "dir":
                    pending.append((f"{rel}/{name}", target / name))
                elif entry_kind == "file":
                    copy_file(root, f"{rel}/{name}", target / name, budget)
        return True
    finally:
        os.close(root)


def copy_file(root: int, rel: str, dest: Path, budget: list[int]) -> None:
    with parent_of(root, rel) as (dfd, name):
        mode = stat.S_IMODE(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    data = read_file(root, rel, budget[0])
    if data is None:
        raise CoiError(f"protected path {rel} is not a regular file or is over {MAX_COPY} bytes")
    budget[0] -= len(data)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    dest.chmod(mode & 0o555 | 0o444)  # a read-only copy, never setuid


def unmasked_paths(workspace: str, settings: Settings) -> tuple[list[str], list[str]]:
    """(the session's protected paths a secret mask does not cover, the masked secrets)."""
    secrets = secret_matches(workspace, list(getattr(settings, "secret_paths", [])))
    paths = [
        path
        for path in session_paths(workspace, settings)
        if not any(path == top or path.startswith(top + "/") for top in secrets)
    ]
    return paths, secrets


class ProtectHook(SessionHook):
    def __init__(self) -> None:
        # container -> its unmasked protected paths, from prepare_instance to before_start (a
        # new container's: the workspace walked once per start, not twice)
        self.planned: dict[str, list[str]] = {}

    def prepare_instance(self, ctx: LaunchContext) -> None:
        workspace = ctx.request.workspace
        shift = ctx.devices.get("workspace", {}).get("shift")
        # where the workspace is mounted ([paths] preserve_workspace_path may change it)
        mounted = ctx.devices.get("workspace", {}).get("path") or WORKSPACE
        settings = ctx.manager.settings
        paths, secrets = unmasked_paths(workspace, settings)
        self.planned[ctx.session.container] = paths
        if secrets:
            empty_file, empty_dir = mask_sources()
            for path in secrets:
                is_dir = os.path.isdir(os.path.join(workspace, path))
                ctx.devices[device_name(path, "mask-")] = {
                    "type": "disk",
                    "source": empty_dir if is_dir else empty_file,
                    "path": f"{mounted}/{path}",
                    "readonly": "true",
                }
        copies = copies_dir(ctx.session.container)
        shutil.rmtree(copies, ignore_errors=True)
        budget = [MAX_COPY, MAX_COPY_ENTRIES]
        for index, path in enumerate(paths):
            source = copies / str(index) / os.path.basename(path)
            try:
                if not snapshot(workspace, path, source, budget):
                    continue  # became a link or vanished since it was listed
            except (CoiError, OSError) as exc:
                # an agent can bloat or lock a protected folder: that must not stop the next
                # session; the workspace guard still checks the path when the session ends
                ctx.manager.say(f"warning: {path} is not mounted read-only ({exc})")
                continue
            device = {
                "type": "disk",
                "source": str(source),
                "path": f"{mounted}/{path}",
                "readonly": "true",
            }
            if shift:
                device["shift"] = shift
            ctx.devices[device_name(path)] = device

    def before_start(self, ctx: LaunchContext) -> None:
        settings, name = ctx.manager.settings, ctx.session.container
        planned = self.planned.pop(name, None)  # a reused container had no prepare_instance
        if not settings.host_immutable:
            return
        workspace = ctx.request.workspace
        paths = planned if planned is not None else unmasked_paths(workspace, settings)[0]
        immutable.apply(name, workspace, paths, ctx.manager.say)

    def container_ended(self, manager: SessionHost, name: str, removed: bool) -> None:
        immutable.release(name, manager.say)  # the agent is gone: the paths are the user's
        if removed:
            shutil.rmtree(copies_dir(name), ignore_errors=True)


HOOK = ProtectHook()
