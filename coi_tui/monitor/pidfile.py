"""One daemon per COI home: its lock and pid files, and its log, as both sides need them.
`coi` (monitor/control.py, health checks) asks whether a daemon runs without importing the
daemon and its detectors; the daemon (root) uses the same paths. Standard library and
core/nofollow only: it is one of control.DAEMON_MODULES."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from coi_tui.core import nofollow


def lock_path(home: Path) -> Path:
    return home / "monitor.lock"


def pid_path(home: Path) -> Path:
    return home / "monitor.pid"


READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def running_pid(home: Path) -> int:
    """The pid of the daemon holding this home's lock, or 0. Neither file is followed if it
    is a symlink (root runs this too): a symlink or a FIFO at the lock is no daemon."""
    try:
        fd = os.open(lock_path(home), READ_FLAGS)
    except OSError:
        return 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return 0
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return 0  # nobody holds it
    except BlockingIOError:
        try:
            pid_fd = os.open(pid_path(home), READ_FLAGS)
            try:
                if not stat.S_ISREG(os.fstat(pid_fd).st_mode):
                    return -1
                return int(os.read(pid_fd, 64).decode().strip() or 0)
            finally:
                os.close(pid_fd)
        except (OSError, ValueError):
            return -1  # held, pid not written yet
    finally:
        os.close(fd)


def open_log(home: Path, owner: tuple[int, int] | None = None) -> int:
    """An O_APPEND fd on <home>/logs/monitor.log. As root the home is the user's: the
    directory is walked and the file opened without following a symlink (a link planted at
    monitor.log is replaced, its target never written); `owner` gets what root creates."""
    logs_fd = nofollow.open_dir(home / "logs", create=True, mode=0o755, owner=owner)
    try:
        return nofollow.open_append(logs_fd, "monitor.log", 0o644, owner)
    finally:
        os.close(logs_fd)
