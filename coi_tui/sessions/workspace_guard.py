"""Workspace guard: after a session, the host's git (and direnv, editors, agent CLIs) runs
nothing the agent planted in the workspace.

Read-only mounts of protected paths are only a first layer: container root can unmount them
(measured), a path that does not exist cannot be mounted, and git finds repositories, `.git`
files, commondir links and hooks anywhere. So the guarantee is kept on the host, trusting
nothing in the container:

- A **baseline** is taken when the first session of a workspace starts; later slots join it (a
  slot started beside a tampered one must not bless the tampering). It records every *control
  file*: each git directory's `config`, `config.worktree`, `commondir` and hooks, every `.git`
  file or link, the in-workspace targets of `include.path` and `core.hooksPath`, every file under
  a protected path (at any depth: direnv reads `.envrc` wherever the user cds), and setuid files.
- At each **session end** the workspace is walked again. A git config may differ from its
  baseline only in keys that run nothing (SAFE_KEYS: identity, branches, remotes' URLs...);
  otherwise it is restored (a new repository's config keeps only its safe keys). New or changed
  hooks and protected files are removed or restored; a `.git` file, `.git` link or commondir that
  leads out of the workspace is removed; setuid/setgid bits the session set are cleared. The
  agent's versions go to ~/.coi/quarantine/, and each repair is one line.

Git's own parser reads every config (`git config --file F --list -z --no-includes`), so what is
judged is what host git will read. Every path is opened component by component with O_NOFOLLOW
from the workspace's directory fd, so a link swapped in by a still-running slot cannot make the
guard read or write outside the workspace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write, file_lock
from coi_tui.core.paths import coi_home
from coi_tui.core.text import clean
from coi_tui.sessions.naming import parse_container_name, workspace_hash

Say = Callable[[str], None]

MAX_DEPTH = 256  # directory levels walked; a deeper tree is moved aside (nothing real is)
MAX_BLOB = 1 << 20  # a control file kept for restoring (bigger ones are hashed only)
MAX_HASH = 64 << 20  # past this a control file is compared by size, inode and times (sparse!)
MAX_QUARANTINE = 64 << 20  # bytes copied to the quarantine per check
QUARANTINE_DAYS = 30
SETID = stat.S_ISUID | stat.S_ISGID
# An unfinished rebase, cherry-pick or am: `git rebase --continue` runs its `exec` lines.
GIT_STATE_DIRS = ("rebase-merge", "rebase-apply", "sequencer")

# Git config keys that run nothing and point git at nothing outside: the agent may change
# these (a commit, a branch, a remote). Everything else must stay as it was.
SAFE_KEYS = frozenset(
    {
        "core.repositoryformatversion",
        "core.filemode",
        "core.bare",
        "core.logallrefupdates",
        "core.ignorecase",
        "core.precomposeunicode",
        "core.symlinks",
        "core.autocrlf",
        "core.eol",
        "core.safecrlf",
        "core.sparsecheckout",
        "core.sparsecheckoutcone",
        "core.untrackedcache",
        "core.commitgraph",
        "extensions.worktreeconfig",
        "extensions.objectformat",
        "user.name",
        "user.email",
        "init.defaultbranch",
        "pull.rebase",
        "pull.ff",
        "push.default",
        "push.autosetupremote",
        "fetch.prune",
        "gc.auto",
        "rerere.enabled",
        "index.version",
        "lfs.repositoryformatversion",
    }
)
SAFE_PATTERN = re.compile(
    r"(branch\..+\.(remote|merge|rebase|pushremote|description)"
    r"|remote\..+\.(url|pushurl|fetch|tagopt|prune)"
    r"|submodule\..+\.(url|active|branch))\Z",
    re.DOTALL,
)
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "LC_ALL": "C",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}


BRANCH_REMOTE = re.compile(r"branch\..+\.(remote|pushremote)\Z", re.DOTALL)
REMOTE_NAME = re.compile(r"\.|[A-Za-z0-9_-][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*\Z")
URL_KEY = re.compile(r"(remote\..+\.(url|pushurl)|submodule\..+\.url)\Z", re.DOTALL)
NETWORK_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/]|[^/:]+@?[^/:]*:[^/]")


def safe_key(key: str) -> bool:
    return key in SAFE_KEYS or SAFE_PATTERN.match(key) is not None


def safe_pair(key: str, value: str) -> bool:
    """A key that runs nothing, with a value that points nowhere on this host: a remote URL
    naming a local path (or file://) would make the user's next fetch copy a private host
    repository into the workspace for the agent to read."""
    if not safe_key(key):
        return False
    if URL_KEY.match(key):
        return NETWORK_URL.match(value) is not None and not value.lower().startswith("file:")
    if BRANCH_REMOTE.match(key):
        # a remote's name (or "." for this repository), never a path or URL of its own
        return REMOTE_NAME.match(value) is not None
    return True


# ---------------------------------------------------------------------------- git's parser
def parse_config(data: bytes) -> list[tuple[str, str]] | None:
    """(key, value) pairs as git reads them; None when git rejects the file."""
    try:
        with tempfile.TemporaryDirectory(prefix="coi-guard-") as tmp:
            path = os.path.join(tmp, "config")
            with open(path, "wb") as handle:
                handle.write(data)
            result = subprocess.run(
                ["git", "config", "--file", path, "--no-includes", "--list", "-z"],
                cwd=tmp,
                env=GIT_ENV,
                capture_output=True,
                timeout=30,
            )
    except (OSError, subprocess.SubprocessError):
        return None  # no room for a temporary file, no git: judged as unreadable
    if result.returncode != 0:
        return None
    pairs = []
    for item in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, _, value = item.partition("\n")
            pairs.append((key, value))
    return pairs


def unsafe_part(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    return None if pairs is None else sorted(p for p in pairs if not safe_pair(*p))


def render_config(base: bytes, safe: list[tuple[str, str]]) -> bytes:
    """`base` (a baseline config, or nothing) with its safe keys replaced by `safe`."""
    with tempfile.TemporaryDirectory(prefix="coi-guard-") as tmp:
        path = os.path.join(tmp, "config")
        with open(path, "wb") as handle:
            handle.write(base)

        def git(*args: str) -> None:
            subprocess.run(
                ["git", "config", "--file", path, *args],
                cwd=tmp,
                env=GIT_ENV,
                capture_output=True,
                timeout=30,
            )

        for key in sorted({k for k, v in parse_config(base) or [] if safe_pair(k, v)}):
            git("--unset-all", key)
        for key, value in safe:
            git("--add", key, value)
        with open(path, "rb") as handle:
            return handle.read()


# ---------------------------------------------------------------------------- safe file access
def split(rel: str) -> list[str]:
    return [part for part in rel.split("/") if part]


def open_dir(root: int, parts: list[str], create: bool = False) -> int:
    """A directory fd for root/parts, never through a symlink. Raises OSError."""
    fd = os.dup(root)
    try:
        for part in parts:
            if part in (".", ".."):
                raise OSError(f"bad path component {part!r}")
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def parent_of(root: int, rel: str, create: bool = False) -> Iterator[tuple[int, str]]:
    parts = split(rel)
    fd = open_dir(root, parts[:-1], create)
    try:
        yield fd, parts[-1]
    finally:
        os.close(fd)


def read_file(root: int, rel: str, limit: int) -> bytes | None:
    """A regular file's bytes (None when it is not one, or is bigger than `limit`)."""
    with parent_of(root, rel) as (dfd, name):
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
                return None
            chunks = []
            while data := os.read(fd, 1 << 16):
                chunks.append(data)
            return b"".join(chunks)
        finally:
            os.close(fd)


def file_state(root: int, rel: str) -> dict[str, object] | None:
    """What is at rel: {'type': 'file', 'sha', 'mode', 'size'} / {'type': 'link', 'target'} /
    {'type': 'dir'|'other'}; None when nothing is there (or the way there is not a directory)."""
    try:
        with parent_of(root, rel) as (dfd, name):
            info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                return {"type": "link", "target": os.readlink(name, dir_fd=dfd)}
            if stat.S_ISDIR(info.st_mode):
                return {"type": "dir"}
            if not stat.S_ISREG(info.st_mode):
                return {"type": "other"}
            if info.st_size > MAX_HASH:
                meta = f"big:{info.st_size}:{info.st_ino}:{info.st_mtime_ns}:{info.st_ctime_ns}"
                return {
                    "type": "file",
                    "sha": meta,
                    "mode": stat.S_IMODE(info.st_mode),
                    "size": info.st_size,
                }
            digest = hashlib.sha256()
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
            except PermissionError:
                # chmod 0111: git still runs it as a hook; we cannot look, so it counts changed
                return {"type": "unreadable", "sha": f"ino:{info.st_ino}:{info.st_mtime_ns}"}
            try:
                while data := os.read(fd, 1 << 20):
                    digest.update(data)
            finally:
                os.close(fd)
            return {
                "type": "file",
                "sha": digest.hexdigest(),
                "mode": stat.S_IMODE(info.st_mode),
                "size": info.st_size,
            }
    except OSError:
        return None


def tree_state(root: int, rel: str, limit: int = MAX_BLOB) -> dict[str, object] | None:
    """A directory's state as one digest of its names and small files (git's rebase and
    sequencer state: a todo list and a few small files)."""
    try:
        fd = open_dir(root, split(rel))
    except OSError:
        return file_state(root, rel)
    digest = hashlib.sha256()
    try:
        for name, kind, _ in sorted(list_dir(fd)):
            digest.update(os.fsencode(name) + b"\0" + kind.encode() + b"\0")
            if kind == "file":
                data = read_file(fd, name, limit)
                if data is None:  # too big to read: its metadata stands for it
                    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    data = f"{info.st_size}:{info.st_ino}:{info.st_mtime_ns}".encode()
                digest.update(hashlib.sha256(data).digest())
    except OSError:
        digest.update(b"unreadable")
    finally:
        os.close(fd)
    return {"type": "tree", "sha": digest.hexdigest()}


def same(a: dict[str, object] | None, b: dict[str, object] | None) -> bool:
    if a is None or b is None:
        return a is b
    keys = ("type", "sha", "target")
    return all(a.get(k) == b.get(k) for k in keys)


# ---------------------------------------------------------------------------- the walk
def is_git_dir(names: set[str]) -> bool:
    """Over-approximates git's is_git_directory (HEAD plus objects/refs, here or through
    commondir); a commondir target needs objects and refs but no HEAD."""
    return ("HEAD" in names and bool(names & {"objects", "refs", "commondir"})) or {
        "objects",
        "refs",
    } <= names


def protected_parent(rel: str, protected: list[str]) -> bool:
    """rel is a directory on the way to a protected path (`.claude` for
    `.claude/settings.json`): a link there would hand the host another file."""
    for path in protected:
        parts = split(path)
        for end in range(1, len(parts)):
            prefix = "/".join(parts[:end])
            if rel == prefix or (not path.startswith(".git/") and rel.endswith("/" + prefix)):
                return True
    return False


@dataclass
class Scan:
    controls: dict[str, str] = field(default_factory=dict)  # rel -> kind
    git_dirs: list[str] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)  # every directory the walk read
    unlistable: set[str] = field(default_factory=set)  # directories it could not read
    too_deep: set[str] = field(default_factory=set)
    setid: set[str] = field(default_factory=set)


def join_rel(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def list_dir(fd: int) -> list[tuple[str, str, int]]:
    """(name, 'dir'|'link'|'file'|'other', mode of a file) for each entry, read while the
    directory's fd is open (a DirEntry of an fd-listing stats through that fd)."""
    out = []
    for entry in os.scandir(fd):
        try:
            if entry.is_symlink():
                out.append((entry.name, "link", 0))
            elif entry.is_dir(follow_symlinks=False):
                out.append((entry.name, "dir", 0))
            elif entry.is_file(follow_symlinks=False):
                out.append((entry.name, "file", entry.stat(follow_symlinks=False).st_mode))
            else:
                out.append((entry.name, "other", 0))
        except OSError:
            out.append((entry.name, "other", 0))
    return out


def list_own_dir(fd: int) -> list[tuple[str, str, int]]:
    """list_dir, giving ourselves read access first to a directory we own that the agent
    made unreadable (chmod 0111: git can still walk through it, we could not look)."""
    try:
        return list_dir(fd)
    except PermissionError:
        info = os.fstat(fd)
        if info.st_uid != os.geteuid():
            raise
        os.fchmod(fd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
        return list_dir(fd)


def open_child(parent: int, name: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        return os.open(name, flags, dir_fd=parent)
    except PermissionError:
        # chmod the very inode we looked at (an O_PATH fd), never a name a slot could swap
        pinned = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=parent)
        try:
            info = os.fstat(pinned)
            if info.st_uid != os.geteuid() or not stat.S_ISDIR(info.st_mode):
                raise
            os.chmod(f"/proc/self/fd/{pinned}", stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
            return os.open(f"/proc/self/fd/{pinned}", flags & ~os.O_NOFOLLOW)
        finally:
            os.close(pinned)


def hidden_from_us(parent: int, name: str) -> bool:
    """A folder we may walk through but not list (x without r): git gets in, we cannot
    look. One we cannot enter at all is as closed to the user's git as to us."""
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return False
    if info.st_uid == os.geteuid():
        bits = (info.st_mode >> 6) & 7
    elif info.st_gid in (os.getegid(), *os.getgroups()):
        bits = (info.st_mode >> 3) & 7
    else:
        bits = info.st_mode & 7
    return bool(bits & 1) and not bits & 4


class Protected:
    """Protected paths as sets, for a walk that costs a few set lookups per entry: a path
    matches where its components end in one of them (`.envrc`, `.claude/settings.json` at any
    depth), or lie below a folder that does; `.git/...` entries count at the top only."""

    def __init__(self, paths: list[str]) -> None:
        self.anywhere = {p for p in paths if not p.startswith(".git/")}
        self.top = [p for p in paths if p.startswith(".git/")]
        self.depth = max((len(split(p)) for p in self.anywhere), default=1)

    def ends_in(self, tail: list[str], name: str) -> bool:
        """tail: the last components of the folder holding `name`."""
        parts = [*tail, name]
        return any(
            "/".join(parts[-k:]) in self.anywhere for k in range(1, min(len(parts), self.depth) + 1)
        )

    def at_top(self, rel: str) -> bool:
        return rel.startswith(".git/") and any(
            rel == p or rel.startswith(p + "/") for p in self.top
        )


def classify(
    scan: Scan,
    rel: str,
    entries: list[tuple[str, str, int]],
    protected: Protected,
    hooks: bool,
    below: bool,
    raw: list[str],
) -> bool:
    """Record the control files among one directory's entries; True for a git directory.
    `below`: this folder lies under a protected path."""
    names = {name for name, _, _ in entries}
    git_dir = is_git_dir(names)
    if git_dir:
        scan.git_dirs.append(rel)
    tail = split(rel)[-(protected.depth - 1) :] if protected.depth > 1 else []
    for name, kind, mode in entries:
        path = join_rel(rel, name)
        is_dir, is_link = kind == "dir", kind == "link"
        if hooks and name.endswith(".sample"):
            pass  # git never runs a sample
        elif git_dir and name in ("config", "config.worktree"):
            scan.controls[path] = "config"
        elif git_dir and name == "commondir":
            scan.controls[path] = "commondir"
        elif git_dir and name in GIT_STATE_DIRS:
            scan.controls[path] = "state"
        elif (git_dir and name == "hooks" and is_link) or (
            hooks and not name.endswith(".sample") and not is_dir
        ):
            scan.controls[path] = "hook"
        elif name == ".git" and not is_dir:
            scan.controls[path] = "gitlink"
        elif not is_dir and (
            below
            or protected.ends_in(tail, name)
            or protected.at_top(path)
            or (is_link and protected_parent(path, raw))
        ):
            scan.controls[path] = "protected"
        if kind == "file" and mode & SETID:
            scan.setid.add(path)
    return git_dir


def walk(root: int, paths: list[str]) -> Scan:
    """Every control file of the workspace (by kind), its git directories, setuid files, and
    what could not be read. Depth first with one fd per level (each directory opened from its
    parent with O_NOFOLLOW: linear time, and a swapped link leads nowhere); a tree deeper than
    MAX_DEPTH is reported, not walked."""
    scan = Scan()
    protected = Protected(paths)
    stack: list[tuple[int, str, list[tuple[str, bool, bool]]]] = []

    def enter(fd: int, rel: str, hooks: bool, below: bool) -> None:
        try:
            entries = list_own_dir(fd)
        except OSError:
            os.close(fd)
            scan.unlistable.add(rel)
            return
        scan.listed.add(rel)
        git_dir = classify(scan, rel, entries, protected, hooks, below, paths)
        tail = split(rel)[-(protected.depth - 1) :] if protected.depth > 1 else []
        children = [
            (
                name,
                git_dir and name == "hooks",
                below or protected.ends_in(tail, name) or protected.at_top(join_rel(rel, name)),
            )
            for name, kind, _ in entries
            if kind == "dir"
        ]
        stack.append((fd, rel, children))

    enter(os.dup(root), "", False, False)
    try:
        while stack:
            fd, rel, children = stack[-1]
            if not children:
                os.close(fd)
                stack.pop()
                continue
            name, hooks, below = children.pop()
            path = join_rel(rel, name)
            if len(stack) >= MAX_DEPTH:
                scan.too_deep.add(path)
                continue
            try:
                child = open_child(fd, name)
            except OSError:
                if hidden_from_us(fd, name):
                    scan.unlistable.add(path)
                continue
            enter(child, path, hooks, below)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return scan


def inside(rel_dir: str, target: str, workspace: str, mounted: str) -> str | None:
    """A link or pointer's target as a workspace-relative path, or None when it leads out.
    Targets written inside the container name the mount point (/workspace)."""
    if target.startswith("/"):
        for top in (mounted, workspace):
            top = top.rstrip("/")
            if target == top or target.startswith(top + "/"):
                target = target[len(top) :].lstrip("/")
                break
        else:
            return None
        norm = os.path.normpath(target) if target else "."
    else:
        norm = os.path.normpath(os.path.join(rel_dir, target))
    if norm in (".", ""):
        return ""
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm


def pointer_target(kind: str, state: dict[str, object], data: bytes | None) -> str | None:
    """What a .git file ('gitdir: X'), .git link or commondir points at, as written; None
    when it cannot be told."""
    if state.get("type") == "link":
        return str(state.get("target", ""))
    if data is None:
        return None
    text = data.decode("utf-8", "surrogateescape").strip()
    if kind == "gitlink":
        return text[len("gitdir:") :].strip() if text.startswith("gitdir:") else None
    return text or None


def config_paths(
    pairs: list[tuple[str, str]], git_dir: str, workspace: str, mounted: str
) -> tuple[list[str], list[str]]:
    """(in-workspace hooksPath dirs, in-workspace include files) named by one config."""
    hooks, includes = [], []
    work_tree = os.path.dirname(git_dir) if os.path.basename(git_dir) == ".git" else git_dir
    for key, value in pairs:
        if key == "core.hookspath":
            found = inside(work_tree, os.path.expanduser(value), workspace, mounted)
            if found is not None:
                hooks.append(found)
        elif key == "include.path" or (key.startswith("includeif.") and key.endswith(".path")):
            found = inside(git_dir, os.path.expanduser(value), workspace, mounted)
            if found is not None:
                includes.append(found)
    return hooks, includes


def global_hooks_path() -> str | None:
    """core.hooksPath from the user's own git config: relative, it names a folder in every
    repository's work tree; absolute, it may lie in this workspace."""
    try:
        result = subprocess.run(
            ["git", "config", "--global", "--get", "core.hooksPath"],
            capture_output=True,
            text=True,
            timeout=10,
            cwd="/",
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = os.path.expanduser(result.stdout.strip())
    return value if result.returncode == 0 and value else None


def rename_noreplace(dfd: int, old: str, new: str) -> None:
    """renameat2(RENAME_NOREPLACE): never onto something the agent put there first."""
    if os.path.lexists(f"/proc/self/fd/{dfd}/{new}"):
        raise FileExistsError(new)
    os.rename(old, new, src_dir_fd=dfd, dst_dir_fd=dfd)


def shown(rel: str) -> str:
    """A workspace path in a report line: the agent chose it, so no escape reaches a terminal."""
    return clean(rel, 300)


# ---------------------------------------------------------------------------- the guard
@dataclass
class Guard:
    workspace: str
    protected: list[str]
    say: Say
    mounted: str = "/workspace"
    hooks_writable: bool = False  # [git] writable_hooks: the user lets the agent write hooks
    home: Path = field(default_factory=coi_home)
    complete: bool = True  # False after a check that could not walk the workspace

    @property
    def key(self) -> str:
        return workspace_hash(self.workspace)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.home, self.key)

    @classmethod
    def from_baseline(cls, baseline: dict, say: Say, home: Path) -> Guard:
        """The guard as it was when the baseline was taken (its paths, not the caller's)."""
        return cls(
            str(baseline["workspace"]),
            list(baseline.get("protected", [])),
            say,
            str(baseline.get("mounted", "/workspace")),
            bool(baseline.get("hooks_writable", False)),
            home,
        )

    # ------------------------------------------------------------------ collect
    def collect(self, root: int, configs: dict[str, list]) -> tuple[dict, Scan]:
        """Control files now, with their states and parsed configs. Hook folders and include
        files named by `configs` (the baseline's) and by the user's own git config count."""
        scan = walk(root, self.protected)
        hook_dirs: set[str] = set()
        includes: set[str] = set()
        global_hooks = global_hooks_path()
        for git_dir in scan.git_dirs:
            tree = os.path.dirname(git_dir) if os.path.basename(git_dir) == ".git" else git_dir
            if global_hooks:
                found = inside(tree, global_hooks, self.workspace, self.workspace)
                if found is not None:
                    hook_dirs.add(found)
        for rel, pairs in configs.items():
            found_hooks, found_includes = config_paths(
                [(str(k), str(v)) for k, v in pairs],
                os.path.dirname(rel),
                self.workspace,
                self.mounted,
            )
            hook_dirs.update(found_hooks)
            includes.update(found_includes)
        entries: dict[str, dict] = {rel: {"kind": kind} for rel, kind in scan.controls.items()}
        for rel in includes:
            entries.setdefault(rel, {"kind": "config"})
        now_configs: dict[str, list] = {}
        for rel, entry in list(entries.items()):
            state = tree_state(root, rel) if entry["kind"] == "state" else file_state(root, rel)
            if state is None or state["type"] == "dir":
                del entries[rel]
                continue
            entry.update(state)
            if entry["kind"] == "config" and state["type"] == "file":
                data = self.read(root, rel)
                pairs = parse_config(data) if data is not None else None
                if pairs is not None:
                    now_configs[rel] = pairs
            if entry["kind"] == "hook" and state["type"] == "link" and rel.endswith("hooks"):
                # .git/hooks as a link to a tracked folder: its files are the hooks
                found = inside(
                    os.path.dirname(rel), str(state["target"]), self.workspace, self.mounted
                )
                if found is not None:
                    hook_dirs.add(found)
        for hook_dir in sorted(hook_dirs):
            try:
                fd = open_dir(root, split(hook_dir))
            except OSError:
                continue
            try:
                names = [n for n, kind, _ in list_dir(fd) if kind != "dir"]
            except OSError:
                names = []
            finally:
                os.close(fd)
            for name in names:
                rel = join_rel(hook_dir, name)
                if name.endswith(".sample") or rel in entries:
                    continue
                state = file_state(root, rel)
                if state is not None:
                    entries[rel] = {"kind": "hook", **state}
        return {"entries": entries, "configs": now_configs, "listed": scan.listed}, scan

    def read(self, root: int, rel: str, limit: int = MAX_BLOB) -> bytes | None:
        try:
            return read_file(root, rel, limit)
        except OSError:
            return None

    # ------------------------------------------------------------------ baseline
    def baseline_path(self) -> Path:
        return self.state_dir / "baseline.json"

    def load(self) -> dict | None:
        try:
            return json.loads(self.baseline_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def store(self, baseline: dict) -> None:
        atomic_write(self.baseline_path(), json.dumps(baseline))

    def discard(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def take(self, holders: list[str]) -> dict:
        root = self.open_root()
        identity = os.fstat(root)
        try:
            configs: dict[str, list] = {}
            for _ in range(10):  # until includes of includes are all known
                now, scan = self.collect(root, configs)
                if now["configs"].keys() == configs.keys():
                    break
                configs = now["configs"]
            blobs = self.state_dir / "blobs"
            blobs.mkdir(parents=True, exist_ok=True)
            for rel, entry in now["entries"].items():
                if entry.get("type") == "file" and int(entry.get("size", 0)) <= MAX_BLOB:
                    data = self.read(root, rel)
                    if data is not None and hashlib.sha256(data).hexdigest() == entry["sha"]:
                        (blobs / str(entry["sha"])).write_bytes(data)
        finally:
            os.close(root)
        return {
            "workspace": self.workspace,
            "real": os.path.realpath(self.workspace),
            "root": [identity.st_dev, identity.st_ino],
            "protected": self.protected,
            "mounted": self.mounted,
            "hooks_writable": self.hooks_writable,
            "holders": holders,
            "entries": now["entries"],
            "configs": now["configs"],
            "setid": sorted(scan.setid),
            "unlistable": sorted(scan.unlistable),
            "too_deep": sorted(scan.too_deep),
            "taken": time.time(),
        }

    def open_root(self, expect: list[int] | None = None) -> int:
        """The workspace's fd: made listable for us if the agent chmod-ed it (it is ours),
        and refused when it is not the directory the baseline was taken of (a link swapped
        in by another workspace's agent would make us repair some other folder)."""
        try:
            fd = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            pinned = os.open(self.workspace, os.O_PATH | os.O_DIRECTORY)
            try:
                info = os.fstat(pinned)
                if info.st_uid != os.geteuid():
                    raise
                os.chmod(f"/proc/self/fd/{pinned}", stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
                fd = os.open(f"/proc/self/fd/{pinned}", os.O_RDONLY | os.O_DIRECTORY)
            finally:
                os.close(pinned)
        info = os.fstat(fd)
        if expect and [info.st_dev, info.st_ino] != list(expect):
            os.close(fd)
            raise OSError(f"{self.workspace} is no longer the directory it was (a link?)")
        return fd

    def replaced(self, baseline: dict) -> bool:
        """The workspace path holds a new real directory (no link on the way), not the one
        of the baseline: the user removed the old tree and made a new one there. (A new one
        that reuses the old inode is checked as the old: its new protected files are then
        set aside, not lost.)"""
        path = self.workspace
        try:
            info = os.lstat(path)
        except OSError:
            return True  # gone: nothing left to repair
        return (
            stat.S_ISDIR(info.st_mode)
            and os.path.realpath(path) == baseline.get("real", os.path.realpath(path))
            and [info.st_dev, info.st_ino] != list(baseline.get("root") or [])
        )

    # ------------------------------------------------------------------ check and repair
    def check(self, baseline: dict) -> list[str]:
        """Repair what the sessions changed; returns one line per repair (also said). Every
        path is repaired on its own: one that fails is set aside, never stops the check."""
        self.complete = False
        try:
            root = self.open_root(baseline.get("root"))
        except OSError as exc:
            if self.replaced(baseline):
                # deleted and made again (a fresh clone): nothing of the old tree is left
                self.complete = True
                return []
            line = f"NOT CHECKED: could not open {self.workspace}: {exc.strerror or exc}"
            self.say(f"workspace guard: {line}")
            return [line]
        report: list[str] = []
        quarantine = Quarantine(self.home, self.key)
        try:
            now, scan = self.collect(root, baseline.get("configs", {}))
            before: dict[str, dict] = baseline.get("entries", {})
            after: dict[str, dict] = now["entries"]
            for rel in sorted(set(before) | set(after)):
                old, new = before.get(rel), after.get(rel)
                if same(old, new):
                    continue
                kind = str((new or old or {}).get("kind"))
                if kind == "hook" and self.hooks_writable:
                    continue
                try:
                    line = self.repair(root, rel, kind, old, new, baseline, now, quarantine)
                except Exception as exc:  # one path must never stop the rest
                    line = f"could not repair {shown(rel)} ({exc}); "
                    line += self.neutralise(root, rel, quarantine)
                if line:
                    report.append(line)
            for rel in sorted(scan.setid - set(baseline.get("setid", []))):
                report.append(self.clear_setid(root, rel, quarantine))
            for rel in sorted(scan.unlistable | scan.too_deep):
                # git can walk into what we cannot see: fail closed
                report.append(f"{shown(rel)} could not be checked; " + self.set_aside(root, rel))
            self.complete = True
        finally:
            os.close(root)
        if report:
            for line in report:
                self.say(f"workspace guard: {line}")
            if quarantine.used:
                self.say(f"workspace guard: the agent's versions are in {quarantine.path}")
                quarantine.write_report(report)
        return report

    def blob(self, entry: dict | None) -> bytes | None:
        if not entry or entry.get("type") != "file":
            return None
        try:
            return (self.state_dir / "blobs" / str(entry["sha"])).read_bytes()
        except OSError:
            return None

    def repair(
        self,
        root: int,
        rel: str,
        kind: str,
        old: dict | None,
        new: dict | None,
        baseline: dict,
        now: dict,
        quarantine: Quarantine,
    ) -> str:
        mode = int((old or new or {}).get("mode", 0o644))
        if kind == "config":
            return self.repair_config(root, rel, old, new, baseline, now, quarantine, mode)
        if kind == "state":
            if new is None:
                return ""
            return "an unfinished rebase or cherry-pick: " + self.set_aside(root, rel)
        if (
            kind in ("gitlink", "commondir")
            and new is not None
            and self.leads_inside(root, rel, kind, new, now)
        ):
            return ""  # leads into the workspace, whose repositories are checked too
        if new is None:
            data = self.blob(old)
            if data is not None and kind in ("protected", "hook"):
                self.write(root, rel, data, mode)
                return f"restored {shown(rel)}, which the session had removed"
            return ""  # a removed pointer runs nothing
        quarantine.take(root, rel, new)
        data = self.blob(old)
        if data is not None:
            self.write(root, rel, data, mode)
            return f"restored {shown(rel)} (the session had changed it)"
        self.remove(root, rel)
        return f"removed {shown(rel)} (the session had {'changed' if old else 'added'} it)"

    def repair_config(
        self,
        root: int,
        rel: str,
        old: dict | None,
        new: dict | None,
        baseline: dict,
        now: dict,
        quarantine: Quarantine,
        mode: int,
    ) -> str:
        base_pairs = [(str(k), str(v)) for k, v in baseline.get("configs", {}).get(rel, [])]
        before = unsafe_part(base_pairs) if old is not None else []
        pairs = now["configs"].get(rel) if new is not None else None
        if new is not None and new.get("type") == "file" and unsafe_part(pairs) == before:
            return ""  # only keys that run nothing changed (a branch, a remote, ...)
        if new is None:
            data = self.blob(old)
            if data is None:
                return ""
            self.write(root, rel, data, mode)
            return f"restored {shown(rel)}, which the session had removed"
        quarantine.take(root, rel, new)
        # git could not read it: keep the baseline's own safe keys
        safe = [p for p in (base_pairs if pairs is None else pairs) if safe_pair(*p)]
        self.write(root, rel, render_config(self.blob(old) or b"", safe), mode)
        what = "restored" if old else "kept only the safe keys of"
        return f"{what} {shown(rel)} (it had changed git settings that run commands)"

    def leads_inside(self, root: int, rel: str, kind: str, new: dict, now: dict) -> bool:
        """A .git file, .git link or commondir whose target is a directory in this workspace
        that the walk read (as the kernel resolves it, not only as written)."""
        base_dir = os.path.dirname(rel)
        if new.get("type") == "file":
            target = pointer_target(kind, new, self.read(root, rel))
        elif new.get("type") == "link" and kind == "gitlink":
            target = pointer_target(kind, new, None)
        else:
            return False
        if target is None or "\0" in target:
            return False
        found = inside(base_dir, target, self.workspace, self.mounted)
        if found is None or found not in now.get("listed", set()):
            return False
        raw = os.path.join(self.workspace, found) if target.startswith("/") else target
        real = os.path.realpath(os.path.join(self.workspace, base_dir, raw))
        return real == os.path.join(os.path.realpath(self.workspace), found).rstrip("/")

    def clear_setid(self, root: int, rel: str, quarantine: Quarantine) -> str:
        try:
            with parent_of(root, rel) as (dfd, name):
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                try:
                    info = os.fstat(fd)
                    if stat.S_ISREG(info.st_mode):
                        os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~SETID)
                finally:
                    os.close(fd)
            return f"cleared the setuid/setgid bits of {shown(rel)}"
        except OSError as exc:
            # not ours to change (another owner): take the file away instead
            return f"setuid {shown(rel)} ({exc.strerror}): " + self.neutralise(
                root, rel, quarantine
            )

    def neutralise(self, root: int, rel: str, quarantine: Quarantine) -> str:
        """Last resort when a repair failed: take the file out of git's way, or failing
        that, the nearest folder around it that can be moved."""
        try:
            state = file_state(root, rel)
            if state is not None:
                quarantine.take(root, rel, state)
            self.remove(root, rel)
            return f"removed {shown(rel)}"
        except Exception:  # try the folders around it next
            pass
        parts = split(rel)
        return (
            self.set_aside(root, "/".join(parts[:-1]))
            if len(parts) > 1
            else (f"COULD NOT REMOVE {shown(rel)}: check it before running git there")
        )

    def set_aside(self, root: int, rel: str) -> str:
        """Rename rel within its folder to an inert, unpredictable name (a rename needs no
        room, and no permission on a directory that is not ours); when that folder will not
        let us, move the folder around it instead."""
        parts = split(rel)
        failure: Exception | None = None
        for end in range(len(parts), 0, -1):
            target = "/".join(parts[:end])
            aside = f"{parts[end - 1]}.coi-quarantined-{secrets.token_hex(6)}"
            try:
                with parent_of(root, target) as (dfd, name):
                    self.retry_writable(
                        dfd, lambda d=dfd, n=name, a=aside: rename_noreplace(d, n, a)
                    )
            except Exception as exc:  # reported below when nothing around it moves either
                failure = exc
                continue
            return f"moved {shown(target)} aside to {shown(aside)}"
        return f"COULD NOT MOVE {shown(rel)} aside ({failure}): check it before running git there"

    @staticmethod
    def retry_writable(dfd: int, action: Callable[[], object]) -> None:
        """Run action; when a folder of ours is read-only (the agent's chmod 0555), make it
        writable for us and run it again."""
        try:
            action()
        except PermissionError:
            info = os.fstat(dfd)
            if info.st_uid != os.geteuid():
                raise
            os.fchmod(dfd, stat.S_IMODE(info.st_mode) | stat.S_IRWXU)
            action()

    def write(self, root: int, rel: str, data: bytes, mode: int) -> None:
        with parent_of(root, rel, create=True) as (dfd, name):
            tmp = f".coi-guard-{os.getpid()}-{hashlib.sha256(os.fsencode(name)).hexdigest()[:12]}"

            def put() -> None:
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd
                )
                try:
                    os.write(fd, data)
                    os.fchmod(fd, mode & 0o777 & ~SETID)
                finally:
                    os.close(fd)

            self.retry_writable(dfd, put)
            try:
                self.remove_at(dfd, name)
                os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=dfd)
                raise

    def remove(self, root: int, rel: str) -> None:
        with parent_of(root, rel) as (dfd, name):
            self.retry_writable(dfd, lambda: self.remove_at(dfd, name))

    @staticmethod
    def remove_at(dfd: int, name: str) -> None:
        try:
            info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            # not ours to delete: move it aside under an inert name
            rename_noreplace(dfd, name, f"{name}.coi-quarantined-{secrets.token_hex(6)}")
        else:
            os.unlink(name, dir_fd=dfd)


class Quarantine:
    """~/.coi/quarantine/<time>-<workspace>/: the agent's versions of what was repaired,
    stored flat under a digest of their path (a copied tree could itself be a repository git
    would run), with MANIFEST.txt naming each (escaped)."""

    def __init__(self, home: Path, key: str) -> None:
        self.base = home / "quarantine"
        self.path = self.base / f"{time.strftime('%Y%m%dT%H%M%S')}-{key}-{secrets.token_hex(3)}"
        self.copied = 0
        self.used = False
        self.manifest: list[str] = []

    def take(self, root: int, rel: str, state: dict) -> None:
        """Best effort: a full disk or an odd name loses the copy, never the repair."""
        try:
            self.prune()
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.used = True
            name = hashlib.sha256(os.fsencode(rel)).hexdigest()[:16]
            target = self.path / name
            if state.get("type") == "link":
                target.write_bytes(os.fsencode(str(state.get("target", ""))))
                self.manifest.append(f"{name}  link  {shown(rel)}")
                return
            room = MAX_QUARANTINE - self.copied
            data = None
            if room > 0:
                with contextlib.suppress(OSError):
                    data = read_file(root, rel, room)
            if data is None:
                self.manifest.append(f"{name}  not kept (too large or unreadable)  {shown(rel)}")
                return
            self.copied += len(data)
            target.write_bytes(data)
            target.chmod(0o600)
            self.manifest.append(f"{name}  file  {shown(rel)}")
        except Exception:  # the quarantine is a courtesy
            return

    def write_report(self, report: list[str]) -> None:
        with contextlib.suppress(OSError):
            (self.path / "MANIFEST.txt").write_text(
                "\n".join(self.manifest) + "\n\n" + "\n".join(report) + "\n", encoding="utf-8"
            )

    def prune(self) -> None:
        if self.used or not self.base.is_dir():
            return
        cutoff = time.time() - QUARANTINE_DAYS * 86400
        for old in self.base.iterdir():
            try:
                if old.stat().st_mtime < cutoff:
                    shutil.rmtree(old, ignore_errors=True)
            except OSError:
                continue


# ---------------------------------------------------------------------------- lifecycle
def state_dir(home: Path, key: str) -> Path:
    return home / "guard" / key


def overlapping(guard: Guard, alive: Callable[[str], bool]) -> str | None:
    """A running session's workspace that is this one under another path, or holds it, or
    lies inside it: two baselines of one tree would each bless what the other's agent did."""
    mine = os.path.realpath(guard.workspace).rstrip("/")
    for path in (guard.home / "guard").glob("*/baseline.json"):
        if path.parent.name == guard.key:
            continue
        try:
            other = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        theirs = str(other.get("real") or other.get("workspace", "")).rstrip("/")
        related = theirs == mine or theirs.startswith(mine + "/") or mine.startswith(theirs + "/")
        if related and any(alive(h) for h in other.get("holders", [])):
            return str(other.get("workspace"))
    return None


def join(guard: Guard, name: str, alive: Callable[[str], bool]) -> None:
    """A session of this workspace starts: take the baseline, or join the running sessions'.
    Sessions recorded as running that are gone (ended without coi) are checked first, with
    the paths of their own baseline. Raises CoiError when the workspace cannot be guarded
    (the session must not start)."""
    workspace = os.path.realpath(guard.workspace)
    if os.path.realpath(guard.home).startswith(workspace.rstrip("/") + "/"):
        # the agent could rewrite the baseline itself (a workspace holding ~/.coi: --force)
        guard.say(f"workspace guard: off, {guard.home} lies inside the workspace")
        return
    with file_lock(f"guard-{guard.key}"):
        other = overlapping(guard, alive)
        if other is not None:
            raise CoiError(
                f"a running session's workspace {other} overlaps {guard.workspace}; end it "
                "first (the workspace guard cannot tell one agent's changes from the other's)"
            )
        baseline = guard.load()
        if baseline is not None:
            others = [h for h in baseline.get("holders", []) if h != name]
            live = [h for h in others if alive(h)]
            if live != others or not live:
                stale = Guard.from_baseline(baseline, guard.say, guard.home)
                stale.check(baseline)
                if not stale.complete:
                    raise CoiError(
                        "the workspace guard could not check what the last session left "
                        f"in {guard.workspace} (see above); fix that before starting another"
                    )
            if live:
                baseline["holders"] = [*live, name]
                guard.store(baseline)
                return
        guard.discard()
        try:
            guard.store(guard.take([name]))
        except OSError as exc:
            guard.discard()
            raise CoiError(
                f"the workspace guard could not record {guard.workspace}: {exc.strerror or exc}"
            ) from None


@contextmanager
def locked_baseline(name: str, prefix: str, home: Path | None) -> Iterator[dict | None]:
    """The baseline of the workspace a coi container belongs to (None: none is kept), under
    the guard's lock for that workspace."""
    parsed = parse_container_name(prefix, name)
    if parsed is None:
        yield None
        return
    with file_lock(f"guard-{parsed[0]}"):
        path = state_dir(home or coi_home(), parsed[0]) / "baseline.json"
        try:
            baseline = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            baseline = None
        yield baseline  # what the caller raises passes through


def leave(name: str, prefix: str, say: Say, home: Path | None = None) -> list[str]:
    """A session ended (its container removed or stopped): check and repair the workspace;
    the last one out drops the baseline (kept when the check could not complete, so the next
    session's start checks again)."""
    with locked_baseline(name, prefix, home) as baseline:
        if baseline is None:
            return []
        guard = Guard.from_baseline(baseline, say, home or coi_home())
        report = guard.check(baseline)
        holders = [h for h in baseline.get("holders", []) if h != name]
        if holders or not guard.complete:
            baseline["holders"] = holders
            guard.store(baseline)
        else:
            guard.discard()
        return report


def patrol(name: str, prefix: str, say: Say, home: Path | None = None) -> list[str]:
    """The same check while a session runs (its supervisor calls it every few seconds), so a
    host tool that runs git in the workspace meets what the agent planted for seconds, not
    for the rest of the session. The baseline stays as it is."""
    with locked_baseline(name, prefix, home) as baseline:
        if baseline is None or name not in baseline.get("holders", []):
            return []
        return Guard.from_baseline(baseline, say, home or coi_home()).check(baseline)
