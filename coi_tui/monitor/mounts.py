"""Mounts made inside a container after its watch began.

The sensitive-file watcher's fanotify marks are on inodes: a tmpfs mounted over
/etc/sudoers.d, or a file bind-mounted over /etc/passwd, puts other inodes at those paths and
what is written there is never seen. So the mount table of the container's init (its mount
namespace, read from the host as /proc/<init>/mountinfo) is recorded when the watch begins
and compared on every full pass: a new or changed mount on, above or over a watched path
(filewatch.SENSITIVE: its directories, "~" being /root and /home/*, and their watched names
below them) is CRITICAL `file.mount-over`; any other new mount is INFO `file.mount` (docker
in a session mounts overlays under /var/lib/docker), except the init system's own under
/proc, /sys, /dev and /run and on /tmp (systemd mounts those while the container boots,
which is when the watch begins): these are not recorded.

Limits: mounts made in another mount namespace (`unshare -m`) are not in init's table; a
mount made and removed between two passes (about a second) is not seen.

The table comes from a hostile container: it is read bounded (bytes and lines), and every
text shown is cleaned (coi_tui/core/text.py).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from coi_tui.core.text import clean
from coi_tui.monitor.events import Threat
from coi_tui.monitor.filewatch import SENSITIVE

MAX_TABLE_BYTES = 2 << 20  # one mountinfo read; a container can make ~100,000 mounts
MAX_MOUNTS = 10000  # entries compared; more is reported (HIGH), never silently skipped
READ_CHUNK = 256 * 1024
SHOWN = 300  # characters of a mount point or source in a record
# where an init system mounts while it boots (credentials, mqueue, cgroups, /run/user/N):
# a mount there hides no watched file, and an INFO per boot mount would be noise
BOOT_PLACES = ("/proc", "/sys", "/dev", "/run")
BOOT_POINTS = ("/tmp",)


@dataclass(frozen=True)
class Mount:
    mount_id: int
    point: str
    fstype: str
    source: str
    root: str  # the part of the source file system mounted (a bind mount's origin)


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        chunk = text[i + 1 : i + 4]
        if text[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_line(line: str) -> Mount | None:
    """One mountinfo line: `id parent major:minor root point options [optional...] - fstype
    source super-options`; None when it is not one."""
    parts = line.split(" ")
    if len(parts) < 10 or "-" not in parts[6:]:
        return None
    dash = parts.index("-", 6)
    if dash + 2 >= len(parts):
        return None
    try:
        mount_id = int(parts[0])
    except ValueError:
        return None
    return Mount(
        mount_id,
        _unescape(parts[4]),
        _unescape(parts[dash + 1]),
        _unescape(parts[dash + 2]),
        _unescape(parts[3]),
    )


def read_table(init_pid: int) -> tuple[dict[int, Mount], bool] | None:
    """The mounts of `init_pid`'s mount namespace and whether the table was cut short (over
    MAX_TABLE_BYTES or MAX_MOUNTS); None when it cannot be read (the container is gone)."""
    try:
        fd = os.open(f"/proc/{init_pid}/mountinfo", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    chunks: list[bytes] = []
    size = 0
    truncated = False
    try:
        while True:
            data = os.read(fd, READ_CHUNK)
            if not data:
                break
            chunks.append(data)
            size += len(data)
            if size >= MAX_TABLE_BYTES:
                truncated = True
                break
    except OSError:
        return None
    finally:
        os.close(fd)
    text = b"".join(chunks)[:MAX_TABLE_BYTES].decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if truncated:
        lines = lines[:-1]  # the last line may be cut
    if len(lines) > MAX_MOUNTS:
        lines, truncated = lines[:MAX_MOUNTS], True
    table: dict[int, Mount] = {}
    for line in lines:
        mount = parse_line(line)
        if mount is not None:
            table[mount.mount_id] = mount
    return table, truncated


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def watched_paths() -> list[tuple[list[str], tuple[str, ...]]]:
    """(directory components, watched names in it) for every SENSITIVE entry, "~" expanded
    to /root and /home/* (components may be fnmatch patterns)."""
    found: list[tuple[list[str], tuple[str, ...]]] = []
    for spec in SENSITIVE:
        if spec.dir == "~" or spec.dir.startswith("~/"):
            rest = spec.dir[1:]
            dirs = ["/root" + rest, "/home/*" + rest]
        else:
            dirs = [spec.dir]
        for folder in dirs:
            found.append((_parts(folder), spec.names))
    return found


WATCHED = watched_paths()


def booted(point: str) -> bool:
    """A place the init system mounts on while the container boots."""
    return point in BOOT_POINTS or any(
        point == place or point.startswith(place + "/") for place in BOOT_PLACES
    )


def covers(point: str) -> bool:
    """Whether a mount at `point` puts other inodes where the watcher looks: on a watched
    directory or an ancestor of one, or over a watched name inside one (a file bind-mounted
    over /etc/passwd, a folder over ~/.ssh)."""
    parts = _parts(point)
    for folder, names in WATCHED:
        shared = min(len(parts), len(folder))
        if not all(fnmatch.fnmatchcase(parts[i], folder[i]) for i in range(shared)):
            continue
        if len(parts) <= len(folder):
            return True  # on it or above it
        if any(fnmatch.fnmatchcase(parts[len(folder)], name) for name in names):
            return True  # over a watched file (or a folder in its place)
    return False


@dataclass
class MountWatch:
    """One container's mount table as last seen."""

    init_pid: int
    known: dict[int, Mount] = field(default_factory=dict)
    truncated_reported: bool = False

    @classmethod
    def start(cls, init_pid: int) -> MountWatch:
        watch = cls(init_pid)
        read = read_table(init_pid)
        if read is not None:
            watch.known = read[0]
        return watch

    def check(self) -> list[Threat]:
        """New or changed mounts since the last check (each reported once)."""
        read = read_table(self.init_pid)
        if read is None:
            return []
        table, truncated = read
        found: list[Threat] = []
        for mount_id, mount in table.items():
            if self.known.get(mount_id) == mount:
                continue
            if booted(mount.point) and not covers(mount.point):
                continue
            found.append(self.judge(mount, changed=mount_id in self.known))
        # Cut short: mounts past the cap are not compared, and are not dropped from what is
        # known either (one beyond it could be a mount over a watched folder)
        self.known = {**self.known, **table} if truncated else table
        if truncated and not self.truncated_reported:
            self.truncated_reported = True
            found.append(
                Threat(
                    "file.mount-table-overflow",
                    "high",
                    "evasion",
                    "Too many mounts to check",
                    f"the container's mount table is over {MAX_MOUNTS} entries or "
                    f"{MAX_TABLE_BYTES >> 20} MiB: mounts past that are not checked",
                    {"mounts": {"read": len(table)}},
                    dedup_key=f"file.mount-table-overflow:{self.init_pid}",
                )
            )
        return found

    def judge(self, mount: Mount, changed: bool) -> Threat:
        evidence: dict[str, object] = {
            "mount": {
                "point": clean(mount.point, SHOWN),
                "fstype": clean(mount.fstype, 64),
                "source": clean(mount.source, SHOWN),
                "root": clean(mount.root, SHOWN),
                "mount_id": mount.mount_id,
            }
        }
        what = "moved or changed" if changed else "made"
        shown = f"{clean(mount.fstype, 64)} mount {what} at {clean(mount.point, SHOWN)}"
        key = f"{self.init_pid}:{mount.mount_id}:{mount.point[:SHOWN]}:{mount.fstype[:64]}"
        if covers(mount.point):
            return Threat(
                "file.mount-over",
                "critical",
                "persistence",
                "Mount over a watched sensitive path",
                f"{shown} (from {clean(mount.source, SHOWN)}): writes there would reach other "
                "files than the ones watched",
                evidence,
                dedup_key=f"file.mount-over:{key}",
            )
        return Threat(
            "file.mount",
            "info",
            "persistence",
            "Mount made in the container",
            shown,
            evidence,
            dedup_key=f"file.mount:{key}",
        )
