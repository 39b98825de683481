"""Where coi keeps its state on the host (~/.coi unless $COI_HOME says otherwise)."""

import errno
import hashlib
import json
import os
import stat
from pathlib import Path


def coi_home() -> Path:
    override = os.environ.get("COI_HOME")
    return Path(override).expanduser() if override else Path.home() / ".coi"


def home_tag(home: Path | None = None) -> str:
    """A short id of a COI home: its monitor's nft table and the sessions it owns."""
    return hashlib.sha256(str((home or coi_home()).resolve()).encode()).hexdigest()[:6]


def sessions_dir(tool_sessions_name: str) -> Path:
    """~/.coi/sessions-<tool>/: one folder per saved session."""
    return coi_home() / f"sessions-{tool_sessions_name}"


def locks_dir() -> Path:
    path = coi_home() / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = coi_home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def read_regular(path: str | Path, limit: int, *, checked: bool = False) -> bytes:
    """A config-named file's bytes: a regular file of at most `limit` bytes. A FIFO, a device
    (/dev/zero) or a huge file is refused, never waited on or read whole: a repository names
    such files to hang or exhaust every coi command run in it. `checked`: `path` is a
    resolved path checked earlier, so a final symlink is refused, and so is a file that is no
    longer at `path` once opened (a folder on the way swapped for a link since). Raises
    OSError (strerror says why)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(path, flags | (os.O_NOFOLLOW if checked else 0))
    except OSError as exc:
        if checked and exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "is a symbolic link") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
        if checked:
            try:
                opened = os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                opened = os.path.abspath(path)  # no /proc: the O_NOFOLLOW open is the check
            if opened != os.path.abspath(path):
                raise OSError(errno.EXDEV, f"moved while being opened (now {json.dumps(opened)})")
        data = b""
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
    return data


def read_regular_text(path: Path, limit: int) -> str:
    """read_regular as UTF-8 text (raises UnicodeDecodeError too)."""
    return read_regular(path, limit).decode("utf-8")
