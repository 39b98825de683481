"""Which watched container a process belongs to: the container init's pid namespace among
the process's pid namespace and its ancestors. A process can enter deeper namespaces
(`unshare -p`, a docker container inside the session) but never leave this ancestry, so a
nested namespace is judged as the container's own."""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Container

from coi_tui.monitor.procfs import pid_ns

NS_GET_PARENT = 0xB702  # ioctl on a namespace descriptor: its parent (_IO(0xb7, 0x2))
MAX_PIDNS_DEPTH = 33  # the kernel nests pid namespaces 32 deep


def pid_ns_chain(pid: int) -> tuple[str, ...]:
    """The pid namespace of `pid` then each of its ancestors up to the reader's own, named
    as /proc/<pid>/ns/pid names them ("pid:[inode]"); empty when the process is gone. A
    process can never leave this ancestry (setns and unshare only go deeper)."""
    try:
        fd = os.open(f"/proc/{pid}/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return ()
    chain: list[str] = []
    try:
        while len(chain) < MAX_PIDNS_DEPTH:
            chain.append(f"pid:[{os.fstat(fd).st_ino}]")
            try:
                parent = fcntl.ioctl(fd, NS_GET_PARENT)
            except OSError:  # EPERM: the reader's own namespace (or outside its view)
                break
            os.close(fd)
            fd = parent
    finally:
        os.close(fd)
    return tuple(chain)


class PidnsOwners:
    """Which watched container a process belongs to, judged by its pid namespace's
    ancestry: a namespace nested in a container (`unshare -p`, a docker container inside)
    is that container's as much as the container's own. The ancestry of a namespace is read
    once (three syscalls a level) and remembered for `ttl` seconds only: namespace inode
    numbers are reused once a namespace is gone."""

    def __init__(self, ttl: float = 1.0, limit: int = 4096) -> None:
        self.ttl = ttl
        self.limit = limit
        self.host = pid_ns(os.getpid())
        self.chains: dict[str, tuple[float, tuple[str, ...]]] = {}

    def chain(self, pid: int, pidns: str, now: float | None = None) -> tuple[str, ...]:
        """The ancestry of `pidns`, the namespace just read for `pid` (read again from
        `pid` when not known or too old; empty when `pid` is gone or no longer in it)."""
        now = time.monotonic() if now is None else now
        known = self.chains.get(pidns)
        if known is not None and now - known[0] < self.ttl:
            return known[1]
        chain = pid_ns_chain(pid)
        if not chain or chain[0] != pidns:
            return ()  # the pid exited (or is another process already): nothing learnt
        if len(self.chains) >= self.limit:
            self.chains.clear()
        self.chains[pidns] = (now, chain)
        return chain

    def owner(
        self, pid: int, pidns: str, watched: Container[str] | None, now: float | None = None
    ) -> str:
        """The pid namespace of the watched container `pid` (whose own namespace is
        `pidns`) runs in, or "". `watched` None: the outermost namespace below the host's
        (any container's)."""
        if not pidns or pidns == self.host:
            return ""
        if watched is not None and pidns in watched:
            return pidns  # the common case: a process of the container itself
        chain = self.chain(pid, pidns, now)
        if watched is None:
            if len(chain) >= 2 and chain[-1] == self.host:
                return chain[-2]
            return ""
        return next((ns for ns in chain[1:] if ns in watched and ns != self.host), "")
