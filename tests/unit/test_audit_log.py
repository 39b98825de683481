"""The audit log under a flood and in a directory the user controls; coi_tui.core.nofollow.

The root daemon writes into the user's ~/.coi: a symlink, FIFO or hard link planted there
must never make it write, truncate or chown a file elsewhere."""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from coi_tui.core import nofollow
from coi_tui.monitor.events import AuditLog, Broadcaster, Threat


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(rule: str = "cred.ssh-key", level: str = "warning", pid: int = 1) -> dict[str, Any]:
    threat = Threat(rule, level, "credential_access", "t", f"pid {pid}", {"pid": pid})
    return threat.record("alerted")


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_flood_of_one_rule_is_rate_limited_and_summarised(tmp_path: Path) -> None:
    clock = Clock()
    log = AuditLog(tmp_path, burst=5, refill_sec=2.0, summary_sec=30.0, clock=clock)
    path = tmp_path / "audit" / "c1.jsonl"
    written = [log.write("c1", record(pid=pid)) for pid in range(1000)]  # a new pid each time
    assert written.count(True) == 5
    assert len(lines(path)) == 5
    # another rule, and the same rule in another container, are not starved by the flood
    assert log.write("c1", record("cred.env-dump"))
    assert log.write("c2", record())
    clock.now += 2.0  # one token back: the next record says what was dropped first
    assert log.write("c1", record(pid=5000))
    records = lines(path)
    summary, last = records[-2], records[-1]
    assert summary["rule_id"] == "audit.rate-limited" and summary["level"] == "info"
    assert summary["evidence"]["rate_limited"] == {
        "rule_id": "cred.ssh-key",
        "level": "warning",
        "dropped": 995,
    }
    assert set(summary) >= {"id", "timestamp", "category", "title", "description", "action"}
    assert last["evidence"] == {"pid": 5000}
    # a flood that stops is summarised once summary_sec passed (flush, or any write)
    for pid in range(10):
        log.write("c1", record(pid=pid))
    clock.now += 31.0
    log.flush()
    assert lines(path)[-1]["rule_id"] == "audit.rate-limited"
    log.flush()
    assert [r["rule_id"] for r in lines(path)].count("audit.rate-limited") == 2


def test_the_log_rotates_by_size(tmp_path: Path) -> None:
    log = AuditLog(tmp_path, burst=10**6, max_bytes=4000, keep=2)
    for pid in range(200):
        assert log.write("c1", record(pid=pid))
    audit = tmp_path / "audit"
    names = sorted(p.name for p in audit.iterdir())
    assert names == ["c1.jsonl", "c1.jsonl.1", "c1.jsonl.2"]
    for name in names:
        assert (audit / name).stat().st_size <= 4000
        assert all(json.loads(line) for line in (audit / name).read_text().splitlines())
    assert lines(audit / "c1.jsonl")[-1]["evidence"] == {"pid": 199}


@pytest.mark.parametrize("planted", ["symlink", "dir-symlink", "hardlink", "fifo"])
def test_a_planted_file_at_the_log_path_is_not_followed(tmp_path: Path, planted: str) -> None:
    home = tmp_path / "home"
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "passwd"
    target.write_text("root:x:0:0\n")
    before = target.stat()
    audit = home / "audit"
    audit.mkdir(parents=True)
    if planted == "symlink":
        (audit / "c1.jsonl").symlink_to(target)
    elif planted == "hardlink":
        os.link(target, audit / "c1.jsonl")
    elif planted == "fifo":
        os.mkfifo(audit / "c1.jsonl")
    else:  # the whole audit directory points elsewhere
        audit.rmdir()
        audit.symlink_to(outside)
    owner = (4242, 4242)
    log = AuditLog(home, owner)
    ok = log.write("c1", record())
    after = target.stat()
    assert target.read_text() == "root:x:0:0\n"
    assert (after.st_uid, after.st_mode, after.st_size) == (
        before.st_uid,
        before.st_mode,
        before.st_size,
    )
    assert sorted(p.name for p in outside.iterdir()) == ["passwd"]
    if planted == "dir-symlink":
        assert not ok and "audit" in log.last_error  # refused, said, never raised
    else:
        assert ok
        written = audit / "c1.jsonl"
        assert stat.S_ISREG(written.lstat().st_mode) and written.stat().st_nlink == 1
        assert lines(written)[0]["rule_id"] == "cred.ssh-key"
        if os.geteuid() == 0:
            assert written.stat().st_uid == 4242


def test_open_nofollow_and_write_file_never_touch_a_symlink_target(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    home = tmp_path / "home"
    home.mkdir()
    (home / "monitor.pid").symlink_to(target)
    (home / "monitor.lock").symlink_to(target)
    with pytest.raises(OSError):
        nofollow.open_nofollow(home, "monitor.lock", os.O_RDWR | os.O_CREAT, 0o644)
    nofollow.write_file(home, "monitor.pid", b"123\n", owner=(4242, 4242))
    assert target.read_text() == "keep"
    assert not (home / "monitor.pid").is_symlink()
    assert (home / "monitor.pid").read_text() == "123\n"
    # a symlinked directory on the way is refused where the user could have planted it
    (tmp_path / "link").symlink_to(home)
    with pytest.raises(OSError):
        nofollow.open_dir(tmp_path / "link")
    # ... but a symlink that only root could make is followed (here: / is root's)
    if os.geteuid() == 0 and not os.stat("/").st_mode & 0o022:
        os.close(nofollow.open_dir("/proc/self"))


def test_the_event_socket_replaces_a_planted_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("keep")
    target.chmod(0o600)
    home = tmp_path / "home"
    home.mkdir()
    (home / "monitor.sock").symlink_to(target)
    broadcaster = Broadcaster(home / "monitor.sock", (4242, 4242))
    try:
        info = (home / "monitor.sock").lstat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o660
        if os.geteuid() == 0:
            assert info.st_uid == 4242
        assert stat.S_IMODE(target.stat().st_mode) == 0o600 and target.read_text() == "keep"
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(home / "monitor.sock"))
        broadcaster.accept()
        assert json.loads(client.recv(4096).decode().splitlines()[0])["type"] == "hello"
        client.close()
    finally:
        broadcaster.close()
    assert not (home / "monitor.sock").exists()


def test_the_launcher_never_opens_the_users_log_as_root_through_a_symlink(
    tmp_path: Path,
) -> None:
    from coi_tui.monitor import control

    # the shell no longer redirects into the user's home as root: the daemon opens the log
    assert ">>" not in control.LAUNCHER_TEXT and ".coi/logs" not in control.LAUNCHER_TEXT
    assert "from coi_tui.monitor.daemon import launch" in control.LAUNCHER_TEXT
    if os.geteuid() != 0:
        pytest.skip("the no-follow path is the root one")
    target = tmp_path / "shadow"
    target.write_text("root:x:0:0\n")
    target.chmod(0o600)
    home = tmp_path / "home"
    (home / "logs").mkdir(parents=True)
    (home / "logs" / "monitor.log").symlink_to(target)
    fd = control.open_log(home, (4242, 4242))
    try:
        os.write(fd, b"started\n")
    finally:
        os.close(fd)
    assert target.read_text() == "root:x:0:0\n" and target.stat().st_uid == 0
    log = home / "logs" / "monitor.log"
    assert not log.is_symlink() and log.read_text() == "started\n"
    assert log.stat().st_uid == 4242
