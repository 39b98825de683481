"""`[security] host_immutable`: while a session runs, its protected paths are also immutable
on the host (the inode flag `chattr +i` sets), so container root, which can unmount the
read-only mounts (protect_hook.py), still cannot change or replace them: the flag binds root
in the container's user namespace too. Cleared when the container stops.

Setting the flag needs CAP_LINUX_IMMUTABLE on the host: coi run as root has it; otherwise the
session says once that the paths rely on the mounts and the workspace guard only. A
filesystem without the flag (some network and FUSE ones) is said the same way.

Every path is opened through the workspace's directory fds without following a link (another
slot's agent could swap one in: root must never flag a file outside the workspace). What was
flagged is recorded first in ~/.coi/immutable/<container>.json, so a crashed coi's flags are
cleared by `coi clean`, and no flag is ever left without a record."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home
from coi_tui.sessions.workspace_guard import list_dir, open_dir, split

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x00000010
MAX_ENTRIES = 20_000  # per session, as for the protected copies
UNSUPPORTED = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL)
NOT_ALLOWED = (errno.EPERM, errno.EACCES)


class ImmutableUnavailable(Exception):
    """The flag cannot be set here; the message says why, in one line."""


def manifest_path(container: str, home: Path | None = None) -> Path:
    return (home or coi_home()) / "immutable" / f"{container}.json"


def set_flag(fd: int, on: bool) -> bool:
    """Set or clear the flag on an open inode; True when it changed."""
    buffer = bytearray(8)  # the kernel reads and writes an int; the ioctl's size says long
    fcntl.ioctl(fd, FS_IOC_GETFLAGS, buffer)
    flags = int.from_bytes(buffer[:4], "little")
    wanted = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
    if wanted == flags:
        return False
    fcntl.ioctl(fd, FS_IOC_SETFLAGS, wanted.to_bytes(4, "little") + bytes(4))
    return True


def inodes(root: int, rel: str) -> Iterator[int]:
    """Open fds of workspace/rel and, for a directory, everything under it (links and
    special files left out), each closed once the consumer moves on."""
    parts = split(rel)
    parent = open_dir(root, parts[:-1])
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
    finally:
        os.close(parent)
    pending = [fd]
    seen = 0
    try:
        while pending:
            fd = pending.pop()
            try:
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    for name, kind, _ in list_dir(fd):
                        seen += 1
                        if seen > MAX_ENTRIES:
                            raise OSError(errno.E2BIG, f"more than {MAX_ENTRIES} entries")
                        if kind == "dir":
                            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
                        elif kind == "file":
                            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                        else:
                            continue
                        pending.append(os.open(name, flags, dir_fd=fd))
                yield fd
            finally:
                os.close(fd)
    finally:
        for fd in pending:
            os.close(fd)


def flag_paths(workspace: str, paths: list[str], on: bool) -> list[str]:
    """Set (or clear) the flag on each workspace-relative path, recursively; the paths done.
    A path gone or become a link is skipped. ImmutableUnavailable when the flag cannot be
    used here at all."""
    done = []
    root = os.open(workspace, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for rel in paths:
            try:
                for fd in inodes(root, rel):
                    set_flag(fd, on)
            except FileNotFoundError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    continue  # it, or a parent, is a link (or a file) now: never followed
                if exc.errno in NOT_ALLOWED:
                    raise ImmutableUnavailable(
                        "setting the immutable flag needs root (CAP_LINUX_IMMUTABLE)"
                    ) from None
                if exc.errno in UNSUPPORTED:
                    raise ImmutableUnavailable(
                        "the workspace's filesystem has no immutable flag"
                    ) from None
                raise
            done.append(rel)
    finally:
        os.close(root)
    return done


def apply(container: str, workspace: str, paths: list[str], say: Callable[[str], None]) -> None:
    """Flag the session's protected paths, recorded first."""
    if not paths:
        return
    record = manifest_path(container)
    record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(record, json.dumps({"workspace": workspace, "paths": paths}) + "\n", 0o600)
    try:
        flag_paths(workspace, paths, True)
    except ImmutableUnavailable as exc:
        release(container, say)  # whatever was flagged before the refusal
        say(
            f"warning: [security] host_immutable: {exc}; the protected paths are read-only "
            "mounts, and the workspace guard repairs them if container root undoes those"
        )
    except OSError as exc:
        release(container, say)
        say(f"warning: [security] host_immutable: {exc.strerror or exc}")


def release(container: str, say: Callable[[str], None]) -> bool:
    """Clear what `apply` flagged for this container; True when nothing is left flagged (the
    record goes only then)."""
    record = manifest_path(container)
    try:
        data = json.loads(record.read_text())
        workspace, paths = str(data["workspace"]), [str(p) for p in data["paths"]]
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):
        say(f"warning: unreadable {record}: clear its paths with 'chattr -R -i'")
        return False
    try:
        flag_paths(workspace, paths, False)
    except FileNotFoundError:
        pass  # the workspace itself is gone: nothing flagged is left in it
    except (ImmutableUnavailable, OSError) as exc:
        say(
            f"warning: could not clear the immutable flag in {workspace} ({exc}): "
            f"run 'sudo coi clean' or 'chattr -R -i' on {', '.join(paths)}"
        )
        return False
    record.unlink(missing_ok=True)
    return True


def stale_records(live: Callable[[str], bool], home: Path | None = None) -> list[str]:
    """Containers with a record whose container no longer exists (`coi clean`)."""
    folder = (home or coi_home()) / "immutable"
    if not folder.is_dir():
        return []
    names = sorted(p.stem for p in folder.glob("*.json"))
    return [name for name in names if not live(name)]
