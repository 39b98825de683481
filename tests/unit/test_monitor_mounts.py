"""The mount table comparison (monitor/mounts.py) without a container: parsing mountinfo
lines, which mount points hide a watched path, and what a pass reports."""

from __future__ import annotations

from typing import Any

import pytest

from coi_tui.monitor import mounts
from coi_tui.monitor.mounts import Mount, MountWatch, covers, parse_line


def test_a_mountinfo_line_is_parsed_with_its_escapes() -> None:
    line = r"36 35 98:0 /mnt1 /mnt\0402 rw,noatime master:1 shared:2 - ext3 /dev/r\134x rw"
    assert parse_line(line) == Mount(36, "/mnt 2", "ext3", "/dev/r\\x", "/mnt1")
    assert parse_line("36 35 98:0 / /x rw") is None
    assert parse_line("") is None


@pytest.mark.parametrize(
    "point",
    [
        "/",
        "/etc",
        "/etc/sudoers.d",
        "/etc/sudoers.d/x",
        "/etc/passwd",
        "/home",
        "/home/code",
        "/home/code/.bashrc",
        "/root/.ssh",
        "/home/dev/.ssh/authorized_keys",
        "/var/spool/cron",
    ],
)
def test_mounts_on_above_or_over_watched_paths_are_covered(point: str) -> None:
    assert covers(point)


@pytest.mark.parametrize(
    "point",
    [
        "/mnt/scratch",
        "/etc/hostname",
        "/home/code/build",
        "/var/lib/docker/overlay2/a/merged",
        "/run/docker/netns/x",
        "/dev/shm",
        "/tmp",
    ],
)
def test_other_mounts_are_not_covered(point: str) -> None:
    assert not covers(point)


def test_each_new_or_moved_mount_is_reported_once(monkeypatch: Any) -> None:
    base = {1: Mount(1, "/", "ext4", "/dev/sda", "/")}
    tables = [
        ({**base, 7: Mount(7, "/mnt/scratch", "tmpfs", "none", "/")}, False),
        ({**base, 7: Mount(7, "/mnt/scratch", "tmpfs", "none", "/")}, False),
        ({**base, 7: Mount(7, "/etc/sudoers.d", "tmpfs", "none", "/")}, False),  # mount --move
    ]
    monkeypatch.setattr(mounts, "read_table", lambda pid: tables.pop(0))
    watch = MountWatch(1, dict(base))
    assert [(t.rule_id, t.level) for t in watch.check()] == [("file.mount", "info")]
    assert watch.check() == []
    [moved] = watch.check()
    assert (moved.rule_id, moved.level, moved.category) == (
        "file.mount-over",
        "critical",
        "persistence",
    )
    assert moved.evidence["mount"]["point"] == "/etc/sudoers.d"


def test_a_table_past_the_cap_is_reported_once_and_keeps_what_was_known(monkeypatch: Any) -> None:
    base = {1: Mount(1, "/", "ext4", "/dev/sda", "/"), 2: Mount(2, "/proc", "proc", "proc", "/")}
    monkeypatch.setattr(mounts, "read_table", lambda pid: ({1: base[1]}, True))
    watch = MountWatch(1, dict(base))
    assert [t.rule_id for t in watch.check()] == ["file.mount-table-overflow"]
    assert watch.check() == []
    assert set(watch.known) == {1, 2}


def test_escape_characters_from_the_container_are_cleaned() -> None:
    threat = MountWatch(1).judge(Mount(9, "/mnt/\x1b[31mx", "tmpfs", "a\u202eb", "/"), False)
    assert "\x1b" not in threat.description and "\u202e" not in str(threat.evidence)


def test_the_init_systems_boot_mounts_are_not_recorded(monkeypatch: Any) -> None:
    base = {1: Mount(1, "/", "ext4", "/dev/sda", "/")}
    boot = [
        Mount(2, "/run/credentials/systemd-sysctl.service", "ramfs", "ramfs", "/"),
        Mount(3, "/dev/mqueue", "mqueue", "mqueue", "/"),
        Mount(4, "/run/user/1000", "tmpfs", "tmpfs", "/"),
        Mount(5, "/sys/fs/cgroup/memory", "cgroup", "cgroup", "/"),
        Mount(6, "/tmp", "tmpfs", "tmpfs", "/"),
    ]
    monkeypatch.setattr(
        mounts, "read_table", lambda pid: ({**base, **{m.mount_id: m for m in boot}}, False)
    )
    assert MountWatch(1, dict(base)).check() == []
