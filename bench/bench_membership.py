"""What the monitor pays per exec to know a process's container (issue 17, Docker inside):
the capture process reads the process's pid namespace and asks membership.PidnsOwners. A
container's own process is a set lookup; one in a namespace nested in it (a docker container
inside the session) walks the namespace's ancestry (NS_GET_PARENT), read once a second per
namespace and remembered. Measured on two namespaces nested below the host's
(`unshare -pf` twice: the depth of a docker container in an Incus container); no container
is involved. Figures in microseconds."""

from __future__ import annotations

import subprocess
import time
import timeit
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure
from coi_tui.monitor import membership, procfs

CALLS = 2000  # per repeat; the figure is the median repeat, min and max beside it
REPEATS = 15


def child_of(pid: int) -> int:
    """The one child of `pid` once it exists (unshare forks it)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    while True:
        children = path.read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.001)


def per_call_us(fn: Callable[[], object]) -> list[float]:
    times = timeit.repeat(fn, number=CALLS, repeat=REPEATS)
    return [t / CALLS * 1e6 for t in times]


def fig(name: str, samples: list[float], target: str = "") -> Figure:
    ordered = sorted(samples)
    median = ordered[len(ordered) // 2]
    return Figure(name, median, "us", len(samples), ordered[0], ordered[-1], target)


def run(budget_s: float = 120) -> list[Figure]:
    # the outer namespace stands for the session's, the inner one for docker's inside it
    outer = subprocess.Popen(
        ["unshare", "-pf", "--kill-child", "unshare", "-pf", "--kill-child", "sleep", "600"]
    )
    try:
        session_init = child_of(outer.pid)  # pid 1 of the outer namespace (the second unshare)
        nested = child_of(session_init)  # pid 1 of the inner one (sleep)
        session_ns = procfs.pid_ns(session_init)
        nested_ns = procfs.pid_ns(nested)
        assert membership.pid_ns_chain(nested)[1] == session_ns, "not nested"
        watched = {session_ns}
        cached = membership.PidnsOwners()
        uncached = membership.PidnsOwners(ttl=0.0)
        figures = [
            fig(
                "membership_own_ns_us",
                per_call_us(
                    lambda: cached.owner(session_init, procfs.pid_ns(session_init), watched)
                ),
                "(pid_ns + set lookup)",
            ),
            fig(
                "membership_nested_cached_us",
                per_call_us(lambda: cached.owner(nested, procfs.pid_ns(nested), watched)),
                "per exec",
            ),
            fig(
                "membership_nested_miss_us",
                per_call_us(lambda: uncached.owner(nested, procfs.pid_ns(nested), watched)),
                "once/s/ns",
            ),
        ]
        assert cached.owner(nested, nested_ns, watched) == session_ns
        return figures
    finally:
        outer.kill()
        outer.wait()


if __name__ == "__main__":
    for f in run():
        print(f"{f.name}: {f.value:.2f} {f.unit} (min {f.min:.2f}, max {f.max:.2f})")
