"""Attack: the agent fills its tool config directory (~/.claude) with things that used to hang or
flood the session save (issue 16, class 8): a FIFO (a read of it never ends, and the root
forkfile Incus starts for it keeps the stopped container from being deleted), a 20 GB sparse
file (read whole into memory, written densely), and a directory tree 1200 levels deep (an
uncaught RecursionError that left the container and its network rules behind).

`coi shutdown` must end within a bound, save what is sane, name what it left out, and remove the
container and its rules whatever the save met."""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest.mock import patch

import pytest

from coi_tui.config.settings import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.incus import Incus
from coi_tui.incus.client import PullLimits
from coi_tui.network import netctl
from coi_tui.network.firewall import iface_for
from coi_tui.sessions.manager import SessionManager
from coi_tui.sessions.store import SessionMeta, SessionStore
from coi_tui.tools import get_tool
from tests.conftest import CoiRunner

SHUTDOWN_BOUND = 60.0  # seconds; the save of this directory takes about one

PLANT = r"""
set -e
cd /home/code/.claude
echo kept > marker.txt
mkfifo pipe
: > empty.txt
truncate -s 20G huge.bin
truncate -s 4M holes.bin
printf x >> holes.bin
mkdir deep
cd deep
i=0
while [ $i -lt 1200 ]; do mkdir d; cd d; i=$((i + 1)); done
echo bottom > last.txt
"""


def wait_for(predicate: Callable[[], bool], timeout: float = 60, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def rules_for(name: str) -> bool:
    return iface_for(name) in netctl.interfaces(netctl.table_state())


def forkfiles_of(name: str) -> list[int]:
    """Incus's forkfile helpers that hold this container's root file system open."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"forkfile" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            fds = os.listdir(f"/proc/{pid}/fd")
            targets = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}
        except OSError:
            continue
        if any(t.endswith(f"/containers/{name}/rootfs") for t in targets):
            found.append(int(pid))
    return found


@contextlib.contextmanager
def regression_net(name: str) -> Iterator[None]:
    """Safety net for a regression, so the suite does not hang behind it: a save that opened
    the FIFO or read the giant left Incus's forkfile (host root, the stopped container's root
    file system mounted) waiting or spinning, and `incus delete` waits behind it. Unblock the
    FIFO, then end that one helper by its pid."""
    try:
        yield
    finally:
        pattern = f"/var/lib/incus/storage-pools/*/containers/{name}/rootfs/home/code/.claude/pipe"
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
        for pid in forkfiles_of(name):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.incus
def test_shutdown_survives_a_fifo_a_sparse_giant_and_a_deep_tree(
    coi: CoiRunner,
    workspace: Path,
    incus: Incus,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    result = coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    name = next(x for x in result.stderr.splitlines() if x.startswith("Container: ")).split(": ")[1]
    wait_for(lambda: "dummy>" in coi("tmux", "capture", name).stdout, what="the agent prompt")
    assert rules_for(name), "the session should have network rules to be removed"
    # The agent plants its traps as `code`, in its own config directory.
    planted = incus.exec_capture(name, ["su", "code", "-c", PLANT], timeout=120)
    assert planted.ok, planted.stderr

    # While the container runs, the agent can swap a file for a FIFO after its HEAD: the read
    # then ends at the request timeout, the file is named as left out, nothing else is lost.
    real_stat = incus.stat_path

    def swapped(container: str, path: str, timeout: float | None = None) -> tuple[str, int, int]:
        kind, size, mode = real_stat(container, path, timeout)
        return (kind, 10, mode) if path.endswith("/pipe") else (kind, size, mode)

    said: list[str] = []
    race = tmp_path / "race"
    limits = PullLimits(max_depth=2, request_timeout=2)
    with patch.object(incus, "stat_path", swapped):
        started = time.monotonic()
        incus.pull_tree(name, "/home/code/.claude", race, limits=limits, say=said.append)
    assert time.monotonic() - started < 15
    assert any("pipe: not saved (reading it timed out)" in line for line in said), said
    assert (race / "marker.txt").read_text() == "kept\n" and not (race / "pipe").exists()
    # That read still waits inside the container (a running container's forkfile then blocks
    # a graceful stop): the agent's own write ends it here. coi's save never races like this,
    # it freezes a running container while reading it (checked next).
    released = incus.exec_capture(
        name, ["timeout", "10", "sh", "-c", "echo > /home/code/.claude/pipe"], timeout=30
    )
    # 141 (SIGPIPE): the waiting reader gave up between our open and our write; ended too
    assert released.exit_code in (0, 141), (released.exit_code, released.stderr)

    # A save of the running session (what a signal to `coi shell` does): frozen while read,
    # running again afterwards, the traps left out.
    monkeypatch.setenv("COI_HOME", str(coi.home))
    said.clear()
    manager = SessionManager(incus, load_settings(workspace, env=coi.env), say=said.append)
    froze: list[str] = []
    real_freeze = incus.freeze
    with patch.object(incus, "freeze", lambda c: (froze.append(c), real_freeze(c))[1]):
        assert manager.save_session(incus.get_instance(name)), said
    assert froze == [name]
    assert incus.status(name) == "Running"
    assert any("huge.bin: not saved" in line for line in said), said

    with regression_net(name):
        started = time.monotonic()
        ended = coi("shutdown", name, "--timeout", "5", timeout=SHUTDOWN_BOUND + 30)
        took = time.monotonic() - started
    output = ended.stdout + ended.stderr
    assert ended.returncode == 0, output
    assert took < SHUTDOWN_BOUND, f"coi shutdown took {took:.1f} s"

    # The container and its rules are gone.
    assert not incus.instance_exists(name)
    assert not rules_for(name)

    # What was left out is named, one line each.
    lines = output.splitlines()
    assert any("huge.bin: not saved" in line and "limit per file" in line for line in lines)
    assert any("deep/d/d" in line and "deeper than" in line for line in lines), output
    assert "Traceback" not in output

    # The saved copy: the sane content, no FIFO, no giant, the deep tree cut.
    copies = list((coi.home / "sessions-dummy").glob("*/.claude"))
    assert len(copies) == 1, copies
    copy = copies[0]
    assert (copy / "marker.txt").read_text() == "kept\n"
    assert (copy / "empty.txt").is_file() and (copy / "empty.txt").stat().st_size == 0
    assert not (copy / "huge.bin").exists()
    holes = (copy / "holes.bin").stat()
    assert holes.st_size == (4 << 20) + 1 and holes.st_blocks * 512 < 1 << 20
    pipe = copy / "pipe"
    assert not pipe.exists() or stat.S_ISREG(pipe.lstat().st_mode)
    depth = 0
    total = 0
    for root, dirs, files in os.walk(copy):
        depth = max(depth, len(Path(root).relative_to(copy).parts))
        for entry in dirs + files:
            mode = os.lstat(os.path.join(root, entry)).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), (root, entry)
        total += sum(os.lstat(os.path.join(root, f)).st_blocks * 512 for f in files)
    assert 10 < depth < 1200
    assert total < 1 << 20

    # Nothing is left holding the session's lock.
    again = coi("kill", "--force", name, timeout=30)
    assert again.returncode == 0 and "already gone" in again.stdout


def test_a_failing_save_is_one_line_and_keeps_the_last_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the pull raises (a RecursionError, a full disk, an Incus error), save_from
    answers False with one line and keeps the previous copy: the caller goes on to delete the
    container and its network rules."""
    monkeypatch.setenv("COI_HOME", str(tmp_path))
    store = SessionStore(get_tool("dummy"))
    meta = SessionMeta("sid", "coi-aaaaaaaa-1", False, "/ws")

    def good(remote: str, local: Path, **_: object) -> int:
        local.mkdir()
        (local / "s.jsonl").write_text("good")
        return 1

    assert store.save_from(good, "c", meta)
    for failure in (RecursionError("deep"), OSError(28, "No space left"), CoiError("gone")):

        def broken(remote: str, local: Path, failure: BaseException = failure, **_: object) -> int:
            local.mkdir()
            raise failure

        said: list[str] = []
        assert not store.save_from(broken, "c", meta, say=said.append)
        assert len(said) == 1 and "could not save session data" in said[0], said
        assert (store.config_copy("sid") / "s.jsonl").read_text() == "good"
        assert [p.name for p in store.path("sid").iterdir() if p.name.startswith(".")] == [
            ".claude"
        ]


class FakeTree(Incus):
    """An Incus whose files API answers from a dict: path -> list of children or file size."""

    def __init__(self, tree: dict[str, list[str] | int]) -> None:
        super().__init__(socket_path="/nonexistent")
        self.tree = tree
        self.read: list[str] = []

    def stat_path(self, name: str, path: str, timeout: float | None = None) -> tuple[str, int, int]:
        entry = self.tree[path]
        return ("directory", 0, 0o755) if isinstance(entry, list) else ("file", entry, 0o644)

    def _files(self, method: str, name: str, path: str, **kwargs: object) -> object:
        listing = self.tree[path]

        class Reply:
            def json(self) -> dict[str, object]:
                return {"metadata": listing}

        return Reply()

    def _pull_regular(
        self, name: str, path: str, fd: int, size: int, deadline: float, timeout: float
    ) -> str:
        self.read.append(path)
        os.write(fd, b"x" * int(self.tree[path]))  # type: ignore[call-overload]
        return ""


def test_pull_limits_total_entries_and_messages(tmp_path: Path) -> None:
    files: dict[str, list[str] | int] = {f"/r/f{i:02}": 100 for i in range(30)}
    tree: dict[str, list[str] | int] = {"/r": sorted(p[3:] for p in files), **files}
    said: list[str] = []
    fake = FakeTree(tree)
    limits = PullLimits(max_total=1000, max_messages=5)
    assert fake.pull_tree("c", "/r", tmp_path / "a", limits=limits, say=said.append) == 10
    assert (
        len(fake.read) == 10 and sum(f.stat().st_size for f in (tmp_path / "a").iterdir()) == 1000
    )
    assert len(said) == 6 and all("limit in all" in line for line in said[:5])
    assert said[5] == "... and 15 more paths not saved"

    said.clear()
    limits = PullLimits(max_entries=5)
    assert FakeTree(tree).pull_tree("c", "/r", tmp_path / "b", limits=limits, say=said.append) == 4
    assert said == ["/r/f04 and 25 more: not saved (too many entries)"]

    # Names no directory can hold are refused, never joined into a host path; a name's
    # escape sequences never reach the terminal.
    evil = "e\x1b]52;c;QUFB\x07"
    tree = {"/r": ["..", "a/b", "ok", evil], "/r/ok": 1, f"/r/{evil}": 2 << 30}
    said.clear()
    assert FakeTree(tree).pull_tree("c", "/r", tmp_path / "c", say=said.append) == 1
    assert len(said) == 3 and not any("\x1b" in line or "\x07" in line for line in said)
    assert "/r/e?]52;c;QUFB?: not saved (2.0 GiB, over the 1.0 GiB limit per file)" in said
    assert "/r/..: not saved (not a valid name)" in said
    assert "/r/a/b: not saved (not a valid name)" in said
