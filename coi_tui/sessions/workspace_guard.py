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

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from coi_tui.paths import coi_home
from coi_tui.sessions.naming import parse_container_name, workspace_hash
from coi_tui.sessions.slots import file_lock

Say = Callable[[str], None]

MAX_ENTRIES = 2_000_000  # directory entries walked per scan
MAX_BLOB = 1 << 20  # a control file kept for restoring (bigger ones are hashed only)
MAX_QUARANTINE = 64 << 20  # bytes copied to the quarantine per check
QUARANTINE_DAYS = 30
SETID = stat.S_ISUID | stat.S_ISGID

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
    r"|remote\..+\.(url|pushurl|fetch|push|tagopt|prune|mirror)"
    r"|submodule\..+\.(url|active|branch))\Z",
    re.DOTALL,
)
GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "LC_ALL": "C",
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
}


def safe_key(key: str) -> bool:
    return key in SAFE_KEYS or SAFE_PATTERN.match(key) is not None


# ---------------------------------------------------------------------------- git's parser
def parse_config(data: bytes) -> list[tuple[str, str]] | None:
    """(key, value) pairs as git reads them; None when git rejects the file."""
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
    if result.returncode != 0:
        return None
    pairs = []
    for item in result.stdout.decode("utf-8", "surrogateescape").split("\0"):
        if item:
            key, _, value = item.partition("\n")
            pairs.append((key, value))
    return pairs


def unsafe_part(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    return None if pairs is None else sorted(p for p in pairs if not safe_key(p[0]))


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

        for key in sorted({k for k, _ in parse_config(base) or [] if safe_key(k)}):
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
            digest = hashlib.sha256()
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
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


def protected_match(rel: str, protected: list[str]) -> bool:
    for path in protected:
        if path.startswith(".git/"):
            if rel == path or rel.startswith(path + "/"):
                return True
        elif (
            rel == path
            or rel.startswith(path + "/")
            or rel.endswith("/" + path)
            or f"/{path}/" in rel
        ):
            return True
    return False


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
    setid: set[str] = field(default_factory=set)
    truncated: bool = False


def join_rel(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def list_dir(fd: int) -> list[tuple[str, str, int]]:
    """(name, 'dir'|'link'|'file'|'other', mode of a file) for each entry, read while the
    directory's fd is open (a DirEntry of an fd-listing stats through that fd)."""
    out = []
    try:
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
                continue
    except OSError:
        pass
    return out


def walk(root: int, protected: list[str]) -> Scan:
    """Every control file of the workspace (by kind), git directories and setuid files. The
    walk never follows a link; each directory is reopened from the root (O_NOFOLLOW per
    component), so a deep tree costs no fds and a swapped link leads nowhere."""
    scan = Scan()
    hook_dirs: set[str] = set()
    pending = [""]
    seen = 0
    while pending:
        rel = pending.pop()
        try:
            fd = open_dir(root, split(rel))
        except OSError:
            continue
        try:
            entries = list_dir(fd)
        finally:
            os.close(fd)
        seen += len(entries)
        if seen > MAX_ENTRIES:
            scan.truncated = True
            break
        names = {name for name, _, _ in entries}
        git_dir = is_git_dir(names)
        if git_dir:
            scan.git_dirs.append(rel)
            hook_dirs.add(join_rel(rel, "hooks"))
        in_hooks = rel in hook_dirs
        for name, kind, mode in entries:
            path = join_rel(rel, name)
            is_dir, is_link = kind == "dir", kind == "link"
            if git_dir and name in ("config", "config.worktree"):
                scan.controls[path] = "config"
            elif git_dir and name == "commondir":
                scan.controls[path] = "commondir"
            elif (git_dir and name == "hooks" and is_link) or (
                in_hooks and not name.endswith(".sample") and not is_dir
            ):
                scan.controls[path] = "hook"
            elif name == ".git" and not is_dir:
                scan.controls[path] = "gitlink"
            elif not is_dir and (
                protected_match(path, protected) or (is_link and protected_parent(path, protected))
            ):
                scan.controls[path] = "protected"
            if is_dir:
                pending.append(path)
            elif kind == "file" and mode & SETID:
                scan.setid.add(path)
    return scan


def inside(rel_dir: str, target: str, workspace: str, mounted: str) -> str | None:
    """A link or pointer's target as a workspace-relative path, or None when it leads out.
    Targets written inside the container name the mount point (/workspace)."""
    if target.startswith("/"):
        for top in (mounted, workspace):
            if target == top or target.startswith(top.rstrip("/") + "/"):
                target = target[len(top.rstrip("/")) :].lstrip("/")
                break
        else:
            return None
        norm = os.path.normpath(target)
    else:
        norm = os.path.normpath(os.path.join(rel_dir, target))
    if norm in (".", ""):
        return ""
    if norm == ".." or norm.startswith("../") or norm.startswith("/"):
        return None
    return norm


def pointer_target(kind: str, rel: str, state: dict[str, object], data: bytes | None) -> str:
    """What a .git file ('gitdir: X'), .git link or commondir points at, as written."""
    if state.get("type") == "link":
        return str(state.get("target", ""))
    text = (data or b"").decode("utf-8", "replace").strip()
    if kind == "gitlink":
        return text[len("gitdir:") :].strip() if text.startswith("gitdir:") else "\0"
    return text


def config_hook_dirs(
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
    """A relative core.hooksPath in the user's own git config applies in every repository."""
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
    value = result.stdout.strip()
    return value if result.returncode == 0 and value and not value.startswith("/") else None


# ---------------------------------------------------------------------------- the guard
@dataclass
class Guard:
    workspace: str
    protected: list[str]
    say: Say
    mounted: str = "/workspace"
    hooks_writable: bool = False  # [git] writable_hooks: the user lets the agent write hooks
    home: Path = field(default_factory=coi_home)

    @property
    def key(self) -> str:
        return workspace_hash(self.workspace)

    @property
    def state_dir(self) -> Path:
        return state_dir(self.home, self.key)

    # ------------------------------------------------------------------ collect
    def collect(self, root: int, baseline: dict | None) -> tuple[dict, Scan]:
        """Control files now, with their states and parsed configs. Extra controls named by
        configs (hooksPath, includes) come from the baseline's configs and from the user's."""
        scan = walk(root, self.protected)
        extra_hook_dirs: set[str] = set()
        extra_includes: set[str] = set()
        global_hooks = global_hooks_path()
        for git_dir in scan.git_dirs:
            if global_hooks:
                tree = os.path.dirname(git_dir) if os.path.basename(git_dir) == ".git" else git_dir
                found = inside(tree, global_hooks, self.workspace, self.mounted)
                if found is not None:
                    extra_hook_dirs.add(found)
        for rel, pairs in (baseline or {}).get("configs", {}).items():
            hooks, includes = config_hook_dirs(
                [tuple(p) for p in pairs], os.path.dirname(rel), self.workspace, self.mounted
            )
            extra_hook_dirs.update(hooks)
            extra_includes.update(includes)
        entries: dict[str, dict] = {}
        configs: dict[str, list] = {}
        for rel, kind in scan.controls.items():
            entries[rel] = {"kind": kind}
        for rel in extra_includes:
            entries.setdefault(rel, {"kind": "config"})
        for hook_dir in extra_hook_dirs:
            try:
                fd = open_dir(root, split(hook_dir))
            except OSError:
                continue
            try:
                names = [e.name for e in os.scandir(fd) if not e.name.endswith(".sample")]
            finally:
                os.close(fd)
            for name in names:
                entries.setdefault(join_rel(hook_dir, name), {"kind": "hook"})
        for rel, entry in list(entries.items()):
            state = file_state(root, rel)
            if state is None or state["type"] == "dir":
                del entries[rel]
                continue
            entry.update(state)
            if entry["kind"] == "config" and state["type"] == "file":
                data = self.read(root, rel)
                pairs = parse_config(data) if data is not None else None
                if pairs is not None:
                    configs[rel] = pairs
        return {"entries": entries, "configs": configs}, scan

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
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.baseline_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(baseline), encoding="utf-8")
        os.replace(tmp, self.baseline_path())

    def discard(self) -> None:
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def take(self, holders: list[str]) -> dict:
        root = self.open_root()
        try:
            now, scan = self.collect(root, None)
            # a second pass with the configs' own hooksPath/includes known
            now, scan = self.collect(root, now)
            blobs = self.state_dir / "blobs"
            blobs.mkdir(parents=True, exist_ok=True)
            for rel, entry in now["entries"].items():
                if entry.get("type") == "file" and int(entry.get("size", 0)) <= MAX_BLOB:
                    data = self.read(root, rel)
                    if data is not None and hashlib.sha256(data).hexdigest() == entry["sha"]:
                        (blobs / str(entry["sha"])).write_bytes(data)
        finally:
            os.close(root)
        if scan.truncated:
            self.say(
                f"workspace guard: {self.workspace} has more than {MAX_ENTRIES} entries; "
                "only the first were recorded"
            )
        baseline = {
            "workspace": self.workspace,
            "protected": self.protected,
            "mounted": self.mounted,
            "hooks_writable": self.hooks_writable,
            "holders": holders,
            "entries": now["entries"],
            "configs": {k: now["configs"][k] for k in now["configs"]},
            "setid": sorted(scan.setid),
            "taken": time.time(),
        }
        return baseline

    def open_root(self) -> int:
        return os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY)

    # ------------------------------------------------------------------ check and repair
    def check(self, baseline: dict) -> list[str]:
        """Repair what the sessions changed; returns one line per repair (also said)."""
        try:
            root = self.open_root()
        except OSError:
            return []
        report: list[str] = []
        quarantine = Quarantine(self.home, self.key)
        try:
            now, scan = self.collect(root, baseline)
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
                except OSError as exc:
                    line = f"could not repair {rel}: {exc.strerror or exc}"
                    self.neutralise(root, rel, quarantine)
                if line:
                    report.append(line)
            for rel in sorted(scan.setid - set(baseline.get("setid", []))):
                try:
                    with parent_of(root, rel) as (dfd, name):
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                        try:
                            info = os.fstat(fd)
                            if stat.S_ISREG(info.st_mode):
                                os.fchmod(fd, stat.S_IMODE(info.st_mode) & ~SETID)
                        finally:
                            os.close(fd)
                    report.append(f"cleared the setuid/setgid bits of {rel}")
                except OSError as exc:
                    report.append(f"could not clear the setuid bit of {rel}: {exc.strerror}")
            if scan.truncated:
                report.append(f"the workspace has more than {MAX_ENTRIES} entries; checked part")
        finally:
            os.close(root)
        if report:
            where = quarantine.path if quarantine.used else None
            for line in report:
                self.say(f"workspace guard: {line}")
            if where:
                self.say(f"workspace guard: the agent's versions are in {where}")
                (where / "REPORT.txt").write_text("\n".join(report) + "\n", encoding="utf-8")
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
        if kind == "config":
            before = unsafe_part([tuple(p) for p in baseline.get("configs", {}).get(rel, [])])
            if old is None and new is not None:
                before = []
            base_pairs = [tuple(p) for p in baseline.get("configs", {}).get(rel, [])]
            pairs = now["configs"].get(rel) if new is not None else None
            if new is not None and new.get("type") == "file" and unsafe_part(pairs) == before:
                return ""  # only keys that run nothing changed (a branch, a remote, ...)
            if new is None:
                data = self.blob(old)
                if data is None:
                    return ""
                self.write(root, rel, data, int(old.get("mode", 0o644)))  # type: ignore[union-attr]
                return f"restored {rel}, which the session had removed"
            quarantine.take(root, rel, new)
            # git could not read it: keep the baseline's own safe keys
            safe = [p for p in (base_pairs if pairs is None else pairs) if safe_key(p[0])]
            base = self.blob(old) or b""
            self.write(root, rel, render_config(base, safe), int((old or new).get("mode", 0o644)))
            what = "restored" if old else "kept only the safe keys of"
            return f"{what} {rel} (it had changed git settings that run commands)"
        if (
            kind in ("gitlink", "commondir")
            and new is not None
            and self.leads_inside(root, rel, kind, new)
        ):
            return ""  # leads into the workspace, whose repositories are checked too
        if new is None:
            if kind == "protected":
                data = self.blob(old)
                if data is not None:
                    self.write(root, rel, data, int(old.get("mode", 0o644)))  # type: ignore[union-attr]
                    return f"restored {rel}, which the session had removed"
            return ""  # a removed hook or pointer runs nothing
        quarantine.take(root, rel, new)
        data = self.blob(old)
        if data is not None and old is not None:
            self.write(root, rel, data, int(old.get("mode", 0o644)))
            return f"restored {rel} (the session had changed it)"
        self.remove(root, rel)
        return f"removed {rel} (the session had {'changed' if old else 'added'} it)"

    def leads_inside(self, root: int, rel: str, kind: str, new: dict) -> bool:
        """A .git file, .git link or commondir whose target is a place in this workspace (as the
        kernel resolves it, not only as written): the walk checks what is there."""
        base_dir = os.path.dirname(rel)
        if new.get("type") == "file":
            target = pointer_target(kind, rel, new, self.read(root, rel))
        elif new.get("type") == "link" and kind == "gitlink":
            target = str(new.get("target", ""))
        else:
            return False
        found = None if "\0" in target else inside(base_dir, target, self.workspace, self.mounted)
        if found is None:
            return False
        raw = target
        if target.startswith("/"):
            raw = os.path.join(self.workspace, found)
        real = os.path.realpath(os.path.join(self.workspace, base_dir, raw))
        if real != os.path.join(os.path.realpath(self.workspace), found).rstrip("/"):
            return False  # a link on the way leads elsewhere
        if new.get("type") == "link":
            state = file_state(root, found) if found else {"type": "dir"}
            return state is not None and state["type"] == "dir"
        return True

    def neutralise(self, root: int, rel: str, quarantine: Quarantine) -> None:
        """Last resort when a repair failed: take the file out of git's way."""
        try:
            state = file_state(root, rel)
            if state is not None:
                quarantine.take(root, rel, state)
                self.remove(root, rel)
        except OSError:
            pass

    def write(self, root: int, rel: str, data: bytes, mode: int) -> None:
        with parent_of(root, rel, create=True) as (dfd, name):
            tmp = f".coi-guard-{os.getpid()}-{name}"[:200]
            fd = os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dfd
            )
            try:
                os.write(fd, data)
                os.fchmod(fd, mode & 0o777)
            finally:
                os.close(fd)
            self.remove_at(dfd, name)
            os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)

    def remove(self, root: int, rel: str) -> None:
        with parent_of(root, rel) as (dfd, name):
            self.remove_at(dfd, name)

    @staticmethod
    def remove_at(dfd: int, name: str) -> None:
        try:
            info = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(info.st_mode):
            # not ours to delete: move it aside under an inert name
            os.rename(
                name, f"{name}.coi-quarantined-{int(time.time())}", src_dir_fd=dfd, dst_dir_fd=dfd
            )
        else:
            os.unlink(name, dir_fd=dfd)


class Quarantine:
    """~/.coi/quarantine/<time>-<workspace>/: the agent's versions of what was repaired."""

    def __init__(self, home: Path, key: str) -> None:
        self.base = home / "quarantine"
        self.path = self.base / f"{time.strftime('%Y%m%dT%H%M%S')}-{key}"
        self.copied = 0
        self.used = False

    def take(self, root: int, rel: str, state: dict) -> None:
        self.prune()
        target = self.path / rel.replace("..", "_")
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.used = True
        if state.get("type") == "link":
            target.with_name(target.name + ".symlink").write_text(str(state.get("target")))
            return
        room = MAX_QUARANTINE - self.copied
        data = None
        if room > 0:
            try:
                data = read_file(root, rel, room)
            except OSError:
                data = None
        if data is None:
            target.with_name(target.name + ".not-kept").write_text("too large or unreadable\n")
            return
        self.copied += len(data)
        target.write_bytes(data)
        target.chmod(0o600)

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


def join(guard: Guard, name: str, alive: Callable[[str], bool]) -> None:
    """A session of this workspace starts: take the baseline, or join the running sessions'.
    Sessions recorded as running that are gone (ended without coi) are checked first."""
    with file_lock(f"guard-{guard.key}"):
        baseline = guard.load()
        if baseline is not None:
            others = [h for h in baseline.get("holders", []) if h != name]
            live = [h for h in others if alive(h)]
            if live != others or not live:
                guard.check(baseline)
            if live:
                baseline["holders"] = [*live, name]
                guard.store(baseline)
                return
        guard.discard()
        guard.store(guard.take([name]))


def leave(name: str, prefix: str, say: Say, home: Path | None = None) -> list[str]:
    """A session ended (its container removed or stopped): check and repair the workspace;
    the last one out drops the baseline."""
    parsed = parse_container_name(prefix, name)
    if parsed is None:
        return []
    home = home or coi_home()
    with file_lock(f"guard-{parsed[0]}"):
        try:
            baseline = json.loads(
                (state_dir(home, parsed[0]) / "baseline.json").read_text(encoding="utf-8")
            )
        except (OSError, ValueError):
            return []
        holders = list(baseline.get("holders", []))
        if name not in holders:
            return []
        guard = Guard(
            str(baseline["workspace"]),
            list(baseline.get("protected", [])),
            say,
            str(baseline.get("mounted", "/workspace")),
            bool(baseline.get("hooks_writable", False)),
            home,
        )
        report = guard.check(baseline)
        holders.remove(name)
        if holders:
            baseline["holders"] = holders
            guard.store(baseline)
        else:
            guard.discard()
        return report
