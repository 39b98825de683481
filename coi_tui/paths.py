"""Where coi keeps its state on the host (~/.coi unless $COI_HOME says otherwise)."""

import os
from pathlib import Path


def coi_home() -> Path:
    override = os.environ.get("COI_HOME")
    return Path(override).expanduser() if override else Path.home() / ".coi"


def home_tag(home: Path | None = None) -> str:
    """A short id of a COI home: its monitor's nft table and the sessions it owns."""
    import hashlib

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


def read_regular_text(path: Path, limit: int) -> str:
    """A config-named file's text: a regular file of at most `limit` bytes, UTF-8. A FIFO,
    a device (/dev/zero) or a huge file is refused, never waited on or read whole: a
    repository names such files to hang or exhaust every coi command run in it. Raises
    OSError (strerror says why) or UnicodeDecodeError."""
    import errno
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"larger than {limit // 1024} KiB")
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
    return data.decode("utf-8")
