"""The monitor's idle cost (issue 17: under 1% of a core with 10 containers): Incus is asked
which containers run only when their cgroups changed or something is left to retry, and the
per-second pass skips the behavioural checks (and the /proc walk) of a container where
nothing happened, with a periodic sweep of everything behind it."""

from __future__ import annotations

import os
import subprocess
import time
import types
from pathlib import Path
from typing import Any

import pytest

from coi_tui.monitor import daemon as daemon_mod
from coi_tui.monitor import procfs
from coi_tui.monitor.config import MonitorConfig
from coi_tui.monitor.daemon import Daemon, Watched


class FakeInstance:
    def __init__(self, name: str, uuid: str, status: str = "Running") -> None:
        self.name = name
        self.status = status
        self.config = {"volatile.uuid": uuid}


def bare_daemon(monkeypatch: pytest.MonkeyPatch, listing: list[FakeInstance]) -> Any:
    daemon = Daemon.__new__(Daemon)
    daemon.config = MonitorConfig()
    daemon.home = Path("/nonexistent-coi-home")
    daemon.watched, daemon.by_ns, daemon.by_ifindex, daemon.by_ip = {}, {}, {}, {}
    daemon.timers, daemon.pending, daemon.capture_ctl = [], set(), -1
    daemon.rule_queue = daemon_mod.deque()
    daemon.settled, daemon.listed_at, daemon.foreign = None, -1e9, set()
    daemon.passed, daemon.stirred, daemon.mount_polls = {}, set(), {}
    daemon.interrupted = set()
    daemon.lists = 0

    def list_instances(prefix: str) -> list[FakeInstance]:
        daemon.lists += 1
        return listing

    daemon.incus = types.SimpleNamespace(
        list_instances=list_instances,
        instance_state=lambda name: {"pid": os.getpid(), "network": {}},
    )
    daemon.nft = types.SimpleNamespace(add=lambda iface: None, discard=lambda iface: None)
    daemon.broadcaster = types.SimpleNamespace(publish_event=lambda event: None)
    daemon.log = lambda message: None
    daemon.scan = lambda watched, full, nsmap=None: None  # watch(): its first look
    monkeypatch.setattr(daemon_mod, "tag_for", lambda home: "abc123")
    monkeypatch.setattr(daemon_mod.filewatch, "ContainerFiles", _no_files)
    return daemon


def _no_files(*args: object) -> object:
    raise OSError("no fanotify in this test")


def test_incus_is_asked_only_when_a_cgroup_changed_or_something_is_unsettled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listing: list[FakeInstance] = []
    cgroups: dict[str, int] = {}
    daemon = bare_daemon(monkeypatch, listing)
    monkeypatch.setattr(daemon_mod, "payload_cgroups", lambda prefix: dict(cgroups))
    thawed = [False]
    monkeypatch.setattr(daemon_mod, "cgroup_thawed", lambda name: thawed[0])
    daemon.refresh()
    daemon.refresh()
    assert daemon.lists == 2, "nothing watched: asked every second (any cgroup layout)"

    listing.append(FakeInstance("c", "uuid-1"))
    cgroups["c"] = 100
    daemon.lists = 0
    daemon.refresh()
    assert daemon.lists == 1 and "c" in daemon.watched
    for _ in range(3):
        daemon.refresh()
    assert daemon.lists == 1, "nothing changed: Incus is not asked every second"

    cgroups["c"] = 101  # the slot was stopped and started again between two refreshes
    listing[0] = FakeInstance("c", "uuid-2")
    daemon.refresh()
    assert daemon.lists == 2 and daemon.watched["c"].uuid == "uuid-2"

    cgroups["d"] = 200  # a container Incus does not list as running yet (still starting)
    listing.append(FakeInstance("d", "uuid-3", status="Starting"))
    daemon.refresh()
    daemon.refresh()
    assert daemon.lists == 4, "a cgroup that is nobody's is asked about every second"
    listing[1] = FakeInstance("d", "uuid-3")
    daemon.refresh()
    assert "d" in daemon.watched
    daemon.refresh()
    assert daemon.lists == 5, "settled again"

    daemon.watched["c"].status = "Frozen"  # paused by the monitor
    daemon.refresh()
    assert daemon.lists == 5
    thawed[0] = True  # `coi unfreeze`: the next threat must pause it again
    daemon.refresh()
    assert daemon.lists == 6 and daemon.watched["c"].status == "Running"
    thawed[0] = False

    daemon.listed_at -= daemon_mod.INCUS_LIST_BACKSTOP_SEC  # the slow backstop
    daemon.refresh()
    assert daemon.lists == 7

    daemon.watched["d"].init_pid = 2**22 + 12345  # restarted: its init is gone
    daemon.refresh()
    assert daemon.lists == 8


def test_the_pass_skips_behaviour_and_the_proc_walk_of_quiet_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = bare_daemon(monkeypatch, [])
    pidns = procfs.pid_ns(os.getpid())
    watched = Watched("c", os.getpid(), pidns, "", "", 0, daemon.home, "uuid-1")
    daemon.watched["c"] = watched
    daemon.by_ns[pidns] = watched
    walks: list[int] = []
    analysed: list[str] = []

    def walk() -> dict[str, dict[int, str]]:
        walks.append(1)
        return {pidns: {os.getpid(): pidns}}

    monkeypatch.setattr(daemon, "pids_by_container", walk)
    moved = [False]
    monkeypatch.setattr(daemon, "mounts_changed", lambda watched: moved[0])
    monkeypatch.setattr(daemon, "volumes", lambda watched, pids, now: [])
    monkeypatch.setattr(daemon, "respond", lambda watched, found, now: None)
    monkeypatch.setattr(
        daemon_mod.behaviour, "analyse", lambda view, only=None: analysed.append("c") or []
    )
    del daemon.scan  # the real one

    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (1, 1), "a new container: looked at whole"
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (1, 1), "quiet: no walk, no behavioural checks"
    assert watched.pids == {os.getpid()}, "its processes still accounted (volumes, count)"

    watched.pids.add(os.getpid() + 1)  # a fork event (on_fork adds the child)
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (2, 2)
    watched.execs += 1  # an exec in place (no fork)
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (3, 3)
    daemon.stirred.add("c")  # a packet or a file event
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (4, 4)
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (4, 4)
    moved[0] = True  # a mount in its init's namespace (mounts_changed)
    daemon.periodic_pass(sweep=False)
    assert (len(walks), len(analysed)) == (5, 5)
    moved[0] = False
    daemon.periodic_pass(sweep=True)  # the backstop: everything, quiet or not
    assert (len(walks), len(analysed)) == (6, 6)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts in a namespace of its own need root")
def test_a_mount_in_the_inits_namespace_is_flagged_without_reading_the_table(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    daemon = bare_daemon(monkeypatch, [])
    init = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sleep", "60"])
    try:
        pidns = procfs.pid_ns(init.pid)
        watched = Watched("c", init.pid, pidns, "", "", 0, daemon.home, "uuid-1")

        def mounted() -> bool:  # unshare has exec'd sleep in its own mount namespace
            return os.readlink(f"/proc/{init.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")

        deadline = time.monotonic() + 10
        while not mounted() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert daemon.mounts_changed(watched), "first look: its table is read"
        assert not daemon.mounts_changed(watched)
        target = f"/proc/{init.pid}/root/mnt"
        subprocess.run(
            ["nsenter", "-t", str(init.pid), "-m", "mount", "-t", "tmpfs", "none", "/mnt"],
            check=True,
        )
        assert os.path.exists(target)
        assert daemon.mounts_changed(watched), "a mount is flagged"
        assert not daemon.mounts_changed(watched), "once"
    finally:
        init.kill()
        init.wait()
        for fd, _poller in daemon.mount_polls.values():
            os.close(fd)
