"""Atomic file writes and advisory locks: the one way the package does either."""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from coi_tui.core.paths import locks_dir


def atomic_write(
    path: Path, text: str | bytes, mode: int = 0o600, owner: tuple[int, int] | None = None
) -> None:
    """Write `text` (str as UTF-8, or bytes) to `path` so a reader sees the old file or the
    whole new one, never a part: a private temporary name in the same folder, flushed to
    disk, then renamed over (a symlink at `path` is replaced, never written through).
    `mode` and `owner` (uid, gid) are set on the new file before it takes the name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8") if isinstance(text, str) else text
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if owner is not None:
                os.fchown(handle.fileno(), *owner)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


@contextmanager
def file_lock(
    name: str, waiting: Callable[[], None] | None = None, shared: bool = False
) -> Iterator[None]:
    """A lock under ~/.coi/locks, held for the `with` block (released on crash too).
    `waiting` is called once when another holder makes this one wait."""
    path = locks_dir() / f"{name}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                waiting()
            fcntl.flock(fd, mode)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
