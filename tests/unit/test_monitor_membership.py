"""Container membership by pid namespace ancestry (issue 16 class 6): a process in a pid
namespace nested in a watched container's (`unshare -p`, docker inside the session) belongs
to that container, in the capture filter, the /proc passes and owner_of alike."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from coi_tui.monitor import daemon as daemon_module
from coi_tui.monitor import membership
from coi_tui.monitor.daemon import Daemon, Watched, capture_owner

HOST = "pid:[1]"
BOX = "pid:[10]"  # a watched container's init
NESTED = "pid:[11]"  # unshare -p inside it
DEEPER = "pid:[12]"  # docker inside it, unshare -p inside that
OTHER = "pid:[20]"  # another container, not watched
CHAINS = {
    100: (BOX, HOST),
    101: (NESTED, BOX, HOST),
    102: (DEEPER, NESTED, BOX, HOST),
    200: (OTHER, HOST),
    1: (HOST,),
}


@pytest.fixture
def owners(monkeypatch: pytest.MonkeyPatch) -> tuple[membership.PidnsOwners, list[int]]:
    reads: list[int] = []

    def chain(pid: int) -> tuple[str, ...]:
        reads.append(pid)
        return CHAINS.get(pid, ())

    monkeypatch.setattr(membership, "pid_ns_chain", chain)
    found = membership.PidnsOwners()
    found.host = HOST
    return found, reads


def test_nested_namespaces_belong_to_the_watched_container(owners: tuple) -> None:
    found, _ = owners
    watched = {BOX}
    assert found.owner(100, BOX, watched) == BOX
    assert found.owner(101, NESTED, watched) == BOX
    assert found.owner(102, DEEPER, watched) == BOX
    assert found.owner(200, OTHER, watched) == ""
    assert found.owner(1, HOST, watched) == ""
    assert found.owner(5, "", watched) == ""
    # before the daemon sent its list: any container's, named by its outermost namespace
    assert found.owner(102, DEEPER, None) == BOX
    assert found.owner(200, OTHER, None) == OTHER
    assert found.owner(1, HOST, None) == ""


def test_a_namespace_is_read_once_then_again_after_the_ttl(owners: tuple) -> None:
    found, reads = owners
    assert found.owner(100, BOX, {BOX}, now=0.0) == BOX
    assert reads == []  # the container's own processes: no ancestry read at all
    for now in (0.0, 0.1, 0.5):
        assert found.owner(101, NESTED, {BOX}, now=now) == BOX
    assert reads == [101]
    # the watched set changing needs no invalidation (the ancestry is what is remembered)
    assert found.owner(101, NESTED, {OTHER}, now=0.6) == ""
    assert reads == [101]
    # inode numbers are reused once a namespace is gone: never trusted for long
    assert found.owner(101, NESTED, {BOX}, now=found.ttl + 0.1) == BOX
    assert reads == [101, 101]


def test_a_vanished_or_reused_pid_teaches_nothing(owners: tuple) -> None:
    found, _ = owners
    assert found.owner(999, NESTED, {BOX}, now=0.0) == ""  # gone
    assert found.owner(100, NESTED, {BOX}, now=0.0) == ""  # pid now in another namespace
    assert NESTED not in found.chains
    assert found.owner(101, NESTED, {BOX}, now=0.0) == BOX


def test_the_cache_is_bounded(owners: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    found, _ = owners
    found.limit = 3
    monkeypatch.setattr(membership, "pid_ns_chain", lambda pid: (f"pid:[{pid}]", BOX, HOST))
    for pid in range(1000, 1010):
        assert found.owner(pid, f"pid:[{pid}]", {BOX}, now=0.0) == BOX
        assert len(found.chains) <= 3


def test_the_capture_filter_falls_back_to_the_parent(
    owners: tuple, monkeypatch: pytest.MonkeyPatch
) -> None:
    found, _ = owners
    ns = {100: BOX, 101: NESTED, 1: HOST, 200: OTHER}
    monkeypatch.setattr(daemon_module.procfs, "pid_ns", lambda pid: ns.get(pid, ""))
    assert capture_owner(found, (101, 1), {BOX}, 0.0) == BOX
    assert capture_owner(found, (999, 101), {BOX}, 0.0) == BOX  # exited before it was read
    assert capture_owner(found, (1, 0), {BOX}, 0.0) == ""
    assert capture_owner(found, (200, 1), {BOX}, 0.0) == ""


def test_container_pids_and_owner_of_count_nested_processes(
    owners: tuple, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    found, _ = owners
    daemon = Daemon.__new__(Daemon)  # no socket, capture or nft: the membership only
    daemon.owners = found
    box = Watched("box", 100, BOX, "", "", 0, tmp_path)
    daemon.by_ns = {BOX: box}
    nsmap = {1: HOST, 100: BOX, 101: NESTED, 102: DEEPER, 200: OTHER}
    assert daemon.container_pids(box, nsmap) == [100, 101, 102]
    monkeypatch.setattr(daemon_module.procfs, "pid_ns", lambda pid: nsmap.get(pid, ""))
    monkeypatch.setattr(daemon_module.procfs, "all_pids", lambda: list(nsmap))
    assert daemon.container_pids(box) == [100, 101, 102]
    assert daemon.owner_of(102) is box
    assert daemon.owner_of(200) is None
    assert daemon.owner_of(1) is None


def test_the_real_ancestry_of_a_nested_pid_namespace() -> None:
    """The kernel's answer (NS_GET_PARENT), with an unprivileged user namespace when this
    machine allows one, else as root."""
    own = membership.pid_ns_chain(os.getpid())
    assert own and own[0] == os.readlink("/proc/self/ns/pid")
    if not shutil.which("unshare"):
        pytest.skip("no unshare")
    cmd = ["unshare", "-pf", "sleep", "30"]
    if os.geteuid() != 0:
        cmd = ["unshare", "-Ur", *cmd[1:]]
    proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        child = 0
        while not child and time.monotonic() < deadline and proc.poll() is None:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            child = int((kids.read_text().split() or ["0"])[0]) if kids.exists() else 0
            time.sleep(0.01)
        if not child:
            pytest.skip("this machine refuses a nested pid namespace")
        chain = membership.pid_ns_chain(child)
        assert chain[0] == os.readlink(f"/proc/{child}/ns/pid") != own[0]
        assert chain[1:] == own  # nested one level below ours
        watcher = membership.PidnsOwners()
        assert watcher.owner(child, chain[0], {own[0]}) == ""  # our own is the "host"
        assert watcher.owner(child, chain[0], None) == chain[0]
    finally:
        proc.kill()
        proc.wait()
