"""Opening files in a directory someone else controls, for code that runs as root.

The monitor daemon and its launcher run as root but write into the user's ~/.coi (the audit
log, monitor.log, the lock and pid files, the event socket). Everything there, ~/.coi itself
included, is the user's: a symlink planted at `~/.coi/monitor.pid` or `~/.coi/audit` would
make root truncate, chown or append to any file on the host. So:

- `open_dir(path)` walks the path one component at a time from "/". A symlink is followed
  only inside a directory that root alone can change (owned by root, not group- or
  world-writable: `/home -> /var/home` works); from the first directory anyone else can
  change, every component is opened with O_NOFOLLOW, so a symlink there fails (ELOOP or
  ENOTDIR) instead of leading root elsewhere. Missing directories can be created.
- `open_nofollow(dir, name, flags)` opens one name relative to that directory fd with
  O_NOFOLLOW and O_NONBLOCK (a FIFO never blocks) and accepts only a regular file with a
  single link (a hard link to another file is refused).
- `open_append`, `write_file` and `bind_socket` build on them; a planted symlink, FIFO or
  hard link at the name is removed (unlinkat never follows) and a fresh file made.
  `read_file` reads a bounded plain file the same way; `write_existing` writes into a
  kernel file (a cgroup's freezer) that must already be there.

Every file the root daemon writes, renames or removes goes through this module
(tests/unit/test_daemon_stdlib.py looks for any other writer in the daemon's modules).

A file root creates is handed to `owner` (uid, gid) with fchown on the open fd, or fchownat
without following for a socket. Pure stdlib; never prints.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
FILE_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK

Owner = tuple[int, int] | None


def _root_only(fd: int) -> bool:
    """Only root can add, remove or replace entries of this directory."""
    info = os.fstat(fd)
    return info.st_uid == 0 and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_dir(
    path: str | os.PathLike[str], *, create: bool = False, mode: int = 0o755, owner: Owner = None
) -> int:
    """A directory fd for `path` that no symlink planted by a user led to (see the module
    doc). `create`: make missing components (with `mode`, handed to `owner`). The caller
    closes the fd. Raises OSError (ELOOP/ENOTDIR for a symlink where none may be)."""
    parts = [p for p in os.path.abspath(os.fspath(path)).split("/") if p]
    fd = os.open("/", DIR_FLAGS)
    try:
        trusted = True
        for part in parts:
            trusted = trusted and _root_only(fd)
            flags = DIR_FLAGS if trusted else DIR_FLAGS | os.O_NOFOLLOW
            try:
                child = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, mode, dir_fd=fd)
                child = os.open(part, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
                if owner is not None and os.fstat(child).st_uid != owner[0]:
                    os.fchown(child, *owner)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def directory(
    path: str | os.PathLike[str] | int, *, create: bool = False, owner: Owner = None
) -> Iterator[int]:
    """`open_dir` as a context manager; an int is taken as an already open directory fd."""
    if isinstance(path, int):
        yield path
        return
    fd = open_dir(path, create=create, owner=owner)
    try:
        yield fd
    finally:
        os.close(fd)


def _check_plain(fd: int, owner: Owner) -> os.stat_result:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")
    if info.st_nlink != 1:
        raise OSError(errno.EMLINK, "a hard link to another file")
    allowed = {0, os.geteuid()} | ({owner[0]} if owner is not None else set())
    if info.st_uid not in allowed:
        raise OSError(errno.EPERM, f"owned by uid {info.st_uid}")
    return info


def open_nofollow(
    dir: str | os.PathLike[str] | int,
    name: str,
    flags: int,
    mode: int = 0o600,
    owner: Owner = None,
) -> int:
    """Open `name` in `dir` (a path, walked with `open_dir`, or a directory fd) without
    following a symlink at `name` and without blocking on a FIFO; only a regular file with
    one link, owned by root, us or `owner`, is accepted (OSError otherwise). A file owned
    by root is handed to `owner`. The fd is blocking again when returned."""
    if "/" in name or name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"not a plain file name: {name!r}")
    with directory(dir) as dir_fd:
        fd = os.open(name, flags | FILE_FLAGS, mode, dir_fd=dir_fd)
        try:
            info = _check_plain(fd, owner)
            if owner is not None and info.st_uid == 0 and owner[0] != 0:
                os.fchown(fd, *owner)
            os.set_blocking(fd, True)
        except BaseException:
            os.close(fd)
            raise
        return fd


def _remove_planted(dir_fd: int, name: str) -> None:
    """Remove whatever is at `name` unless it is a directory (unlinkat never follows)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise OSError(errno.EISDIR, f"{name} is a directory")
        os.unlink(name, dir_fd=dir_fd)


def open_append(
    dir: str | os.PathLike[str] | int, name: str, mode: int = 0o640, owner: Owner = None
) -> int:
    """An O_APPEND fd on the plain file `name` in `dir`, created if missing. A symlink, a
    FIFO, a device, a hard link or a file of another user at that name is removed first
    and a new file created (its target is never opened)."""
    flags = os.O_WRONLY | os.O_APPEND
    with directory(dir) as dir_fd:
        try:
            return open_nofollow(dir_fd, name, flags | os.O_CREAT, mode, owner)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.EINVAL, errno.EMLINK, errno.EPERM, errno.ENXIO):
                raise
        _remove_planted(dir_fd, name)
        return open_nofollow(dir_fd, name, flags | os.O_CREAT | os.O_EXCL, mode, owner)


def write_file(
    dir: str | os.PathLike[str] | int,
    name: str,
    data: bytes,
    mode: int = 0o644,
    owner: Owner = None,
) -> None:
    """Replace `name` in `dir` with `data` atomically: a new temporary file (O_EXCL, no
    symlink followed) renamed over it. Whatever was at `name` is replaced, never written
    through."""
    with directory(dir) as dir_fd:
        temp = f".{name}.{os.getpid()}.tmp"
        _remove_planted(dir_fd, temp)
        fd = open_nofollow(
            dir_fd, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC, mode, owner
        )
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def bind_socket(
    sock: socket.socket,
    dir: str | os.PathLike[str] | int,
    name: str,
    mode: int = 0o660,
    owner: Owner = None,
) -> None:
    """Bind a unix socket at `name` in `dir` with `mode` from the start (umask at bind, no
    chmod by path) and hand it to `owner` without following a symlink. Whatever was at
    `name` is removed first."""
    with directory(dir) as dir_fd:
        _remove_planted(dir_fd, name)
        old = os.umask(0o777 & ~mode)
        try:  # the directory through its fd: no component of the path is looked up again
            sock.bind(f"/proc/self/fd/{dir_fd}/{name}")
        finally:
            os.umask(old)
        if owner is not None:
            os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)


def read_file(
    dir: str | os.PathLike[str] | int, name: str, limit: int, owner: Owner = None
) -> bytes:
    """The bytes of the plain file `name` in `dir`, at most `limit` of them (a larger file is
    refused with EFBIG, never read whole); a symlink, FIFO, device, hard link or a file of
    another user than root, us or `owner` is refused (OSError)."""
    if "/" in name or name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"not a plain file name: {name!r}")
    with directory(dir) as dir_fd:
        fd = os.open(name, os.O_RDONLY | FILE_FLAGS, dir_fd=dir_fd)
        try:
            if _check_plain(fd, owner).st_size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes")
            data = b""
            while len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        finally:
            os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes")
    return data


def write_existing(dir: str | os.PathLike[str] | int, name: str, data: bytes) -> None:
    """Write `data` into the file `name` that already exists in `dir` (a kernel file such as
    a cgroup's freezer): opened relative to the directory fd with O_NOFOLLOW, never created,
    never truncated through a symlink."""
    if "/" in name or name in ("", ".", ".."):
        raise OSError(errno.EINVAL, f"not a plain file name: {name!r}")
    with directory(dir) as dir_fd:
        fd = os.open(name, os.O_WRONLY | FILE_FLAGS, dir_fd=dir_fd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            os.set_blocking(fd, True)
            os.write(fd, data)
        finally:
            os.close(fd)


def rename(dir: str | os.PathLike[str] | int, old: str, new: str) -> None:
    """Rename `old` to `new` inside `dir` (renameat moves the entry itself: a symlink at
    either name is moved or replaced, never followed)."""
    for name in (old, new):
        if "/" in name or name in ("", ".", ".."):
            raise OSError(errno.EINVAL, f"not a plain file name: {name!r}")
    with directory(dir) as dir_fd:
        os.rename(old, new, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def unlink(dir: str | os.PathLike[str] | int, name: str) -> None:
    """Remove `name` in `dir` (never followed); a missing one is fine."""
    with contextlib.suppress(FileNotFoundError), directory(dir) as dir_fd:
        os.unlink(name, dir_fd=dir_fd)
