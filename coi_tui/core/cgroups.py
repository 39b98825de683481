"""Reading a container's cgroup on the host: the one home of the paths LXC uses and of the
v1/v2 differences. Standard library only, imports nothing of the package (the root monitor
daemon may use it too)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

# Where the unified (v2) hierarchy is mounted: hybrid hosts first, then pure v2.
V2_ROOTS = ("/sys/fs/cgroup/unified", "/sys/fs/cgroup")
# A v1-only host: the pids controller holds every process of the container.
V1_PIDS_ROOT = "/sys/fs/cgroup/pids"
V1_BLKIO_ROOT = "/sys/fs/cgroup/blkio"
PAYLOAD = "lxc.payload."  # LXC's folder for a running container: lxc.payload.<name>
USER_HZ = 100  # cpuacct.stat counts in these


def container_cgroup(name: str) -> Path | None:
    """The folder of a running container's cgroup, None when it does not run (or the
    hierarchy is not mounted)."""
    for root in (*V2_ROOTS, V1_PIDS_ROOT):
        path = Path(root) / f"{PAYLOAD}{name}"
        if path.is_dir():
            return path
    return None


def io_bytes(name: str) -> tuple[int, int]:
    """Bytes read and written by the container (v2 io.stat or v1 blkio); (0, 0) unknown."""
    directory = container_cgroup(name)
    read = write = 0
    if directory is not None and (directory / "io.stat").is_file():
        for line in (directory / "io.stat").read_text().splitlines():
            for field in line.split()[1:]:
                key, _, value = field.partition("=")
                if key == "rbytes":
                    read += int(value)
                elif key == "wbytes":
                    write += int(value)
        return read, write
    stats = Path(V1_BLKIO_ROOT) / f"{PAYLOAD}{name}" / "blkio.throttle.io_service_bytes_recursive"
    try:
        lines = stats.read_text().splitlines()
    except OSError:
        return 0, 0
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return read, write


def pids(name: str) -> list[int]:
    """Host PIDs of every process in the container (its cgroup, recursively)."""
    directory = container_cgroup(name)
    if directory is None:
        return []
    found: set[int] = set()
    for procs in directory.rglob("cgroup.procs"):
        try:
            found.update(int(line) for line in procs.read_text().split())
        except (OSError, ValueError):
            continue
    return sorted(found)


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def process_cgroup(pid: int) -> tuple[str, str]:
    """(v1 cpuacct path, v2 path) of a process's cgroup, init.scope stripped (a container's
    init sits in its init.scope); "" for a hierarchy it is not in."""
    v1 = v2 = ""
    for line in _read(f"/proc/{pid}/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        path = path.removesuffix("/init.scope")
        if "cpuacct" in controllers.split(","):
            v1 = path
        elif controllers == "":
            v2 = path
    return v1, v2


def cpu_seconds(pid: int) -> tuple[float, float] | None:
    """(user, system) CPU seconds of the whole cgroup of process `pid`, None if unknown."""
    v1, v2 = process_cgroup(pid)
    if v1:
        text = _read(f"/sys/fs/cgroup/cpuacct{v1}/cpuacct.stat")
        values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        if "user" in values and "system" in values:
            return int(values["user"]) / USER_HZ, int(values["system"]) / USER_HZ
    if v2:
        for root in reversed(V2_ROOTS):
            text = _read(f"{root}{v2}/cpu.stat")
            values = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
            if "user_usec" in values and "system_usec" in values:
                return int(values["user_usec"]) / 1e6, int(values["system_usec"]) / 1e6
    return None


def payload_cgroups(prefix: str) -> dict[str, int]:
    """Running containers named `prefix`*: name -> inode of its cgroup folder (a container
    started again under the same name gets another). One readdir per v2 root, no stat."""
    found: dict[str, int] = {}
    head = PAYLOAD + prefix
    for root in V2_ROOTS:
        with contextlib.suppress(OSError), os.scandir(root) as entries:
            for entry in entries:
                if entry.name.startswith(head):
                    found.setdefault(entry.name[len(PAYLOAD) :], entry.inode())
    return found
