"""monitor/privilege.py without containers: uid events judged against a baseline, su
followed to its exit, auth-log lines, and tailing a hostile root (symlinks, FIFOs, huge
files, truncation) from the host. Real files in a temporary directory stand in for a
container's root."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from coi_tui.monitor import netlink, privilege
from coi_tui.monitor.privilege import IdChange, PrivilegeWatch

ROOT = 1_000_000  # the container's root as the host sees it
CODE = ROOT + 1000
SUDO = (64, 11, 300, 7)  # (dev, ino, size, mtime_ns) of the image's sudo
SU = (64, 12, 200, 7)


def watch() -> PrivilegeWatch:
    baseline = {SUDO[:2]: (*SUDO[2:], "/usr/bin/sudo"), SU[:2]: (*SU[2:], "/usr/bin/su")}
    return PrivilegeWatch(os.getpid(), ROOT, ROOT, baseline)


def no_command(_pid: int) -> str:
    return ""


def test_uid_event_parsing_and_exit_status() -> None:
    def message(what: int, payload: bytes) -> bytes:
        body = netlink.CN_MSG.pack(1, 1, 0, 0, 16 + len(payload), 0)
        body += netlink.PROC_HDR.pack(what, 0, 0) + payload
        return netlink.NLMSG_HDR.pack(16 + len(body), 3, 0, 0, 0) + body

    data = message(netlink.PROC_EVENT_UID, struct.pack("=iiII", 8, 7, CODE, ROOT))
    data += message(netlink.PROC_EVENT_EXIT, struct.pack("=iiIIii", 7, 7, 256, 17, 1, 1))
    data += message(netlink.PROC_EVENT_GID, struct.pack("=iiII", 9, 9, CODE, ROOT + 42))
    assert netlink.parse_proc_events(data) == [
        netlink.ProcEvent("uid", 7, real=CODE, effective=ROOT),  # a thread's: the process's tgid
        netlink.ProcEvent("exit", 7, status=256),
        netlink.ProcEvent("gid", 9, real=CODE, effective=ROOT + 42),
    ]


def test_id_detail_round_trip_reads_the_program_by_inode() -> None:
    detail = privilege.id_detail(os.getpid(), os.getppid(), CODE, ROOT)
    change = privilege.parse_id_detail(detail)
    info = os.stat(sys.executable)
    assert change is not None and change.identity is not None
    assert change.identity[:2] == (info.st_dev, info.st_ino)
    assert (change.real, change.effective) == (CODE, ROOT)
    # the uids of the process and of its parent, read with it (they may be gone when judged)
    assert change.uids == (os.getuid(), os.geteuid())
    assert change.parent_uids == privilege.proc_uids(os.getppid())
    orphan = privilege.parse_id_detail(privilege.id_detail(os.getpid(), 2**22 + 1, CODE, ROOT))
    assert orphan is not None and orphan.uids is not None and orphan.parent_uids is None
    gone = privilege.parse_id_detail(privilege.id_detail(2**22 + 12345, 1, CODE, ROOT))
    assert gone == IdChange(CODE, ROOT, "", None)
    assert privilege.parse_id_detail(["x"]) is None


def test_setuid_exec_of_a_planted_program_is_high_and_the_images_sudo_is_quiet() -> None:
    state = watch()
    before = {10: (CODE, CODE)}
    state.creds.update(before)
    planted = IdChange(CODE, ROOT, "/tmp/.x", (64, 99, 1000, 5))
    found = state.on_uid(10, 1, planted, lambda pid: "/tmp/.x -p")
    assert [(t.rule_id, t.level) for t in found] == [("priv.setuid-root", "high")]
    assert found[0].evidence["process"]["uid"] == 1000
    assert found[0].evidence["process"]["how"] == "setuid exec"
    state.creds[11] = (CODE, CODE)
    assert state.on_uid(11, 1, IdChange(CODE, ROOT, "/usr/bin/sudo", SUDO), no_command) == []
    # sudo's own later switches (it is root by then) are not escalations
    assert state.on_uid(11, 1, IdChange(ROOT, ROOT, "/usr/bin/sudo", SUDO), no_command) == []
    # a fresh child whose shell is gone when judged: its parent's uids read with the event
    orphan = IdChange(CODE, ROOT, "/tmp/.x", (64, 99, 1000, 5), None, (CODE, CODE))
    found = state.on_uid(12, 2**22 + 1, orphan, no_command)
    assert [(t.rule_id, t.level) for t in found] == [("priv.setuid-root", "high")]


def test_setgid_exec_of_a_planted_program_is_high() -> None:
    state = watch()
    state.creds[13] = (CODE, CODE)
    shadow_cat = IdChange(CODE, ROOT + 42, "/tmp/c", (64, 70, 10, 1))
    found = state.on_gid(13, 1, shadow_cat)
    assert [(t.rule_id, t.level) for t in found] == [("priv.setgid", "high")]
    assert found[0].evidence["process"]["egid"] == 42
    # the image's own setgid program, a drop back, root, the host: nothing
    ssh_agent = (64, 71, 10, 1)
    state.baseline[ssh_agent[:2]] = (10, 1, "/usr/bin/ssh-agent")
    assert state.on_gid(13, 1, IdChange(CODE, ROOT + 100, "/usr/bin/ssh-agent", ssh_agent)) == []
    assert state.on_gid(13, 1, IdChange(CODE, CODE, "/tmp/c", (64, 70, 10, 1))) == []
    state.creds[14] = (ROOT, ROOT)
    assert state.on_gid(14, 1, shadow_cat) == []
    assert state.on_gid(15, os.getpid(), shadow_cat) == []  # parent: host root
    gone = state.on_gid(13, 1, IdChange(CODE, ROOT + 42, "", None))
    assert [(t.rule_id, t.level) for t in gone] == [("priv.setgid-unverified", "warning")]
    # judged after the program and the shell that forked it exited (a busy daemon): the
    # uids read with the event decide, not the /proc of a parent that is gone by then
    quick = IdChange(CODE, ROOT + 42, "/tmp/c", (64, 70, 10, 1), (CODE, CODE), (CODE, CODE))
    found = state.on_gid(16, 2**22 + 1, quick)
    assert [(t.rule_id, t.level) for t in found] == [("priv.setgid", "high")]
    by_root = IdChange(CODE, ROOT + 42, "/tmp/c", (64, 70, 10, 1), (ROOT, ROOT), None)
    assert state.on_gid(17, 2**22 + 1, by_root) == []


def test_a_replaced_setuid_program_does_not_match_its_baseline() -> None:
    state = watch()
    state.creds[12] = (CODE, CODE)
    rewritten = IdChange(CODE, ROOT, "/usr/bin/sudo", (64, 11, 1_400_000, 9))  # same inode
    assert [t.rule_id for t in state.on_uid(12, 1, rewritten, no_command)] == ["priv.setuid-root"]


def test_setuid_call_by_a_capability_holder_is_high_and_a_root_daemon_is_not() -> None:
    state = watch()
    state.creds[20] = (CODE, CODE)  # a python with cap_setuid calling setuid(0)
    python = IdChange(ROOT, ROOT, "/tmp/py", (64, 40, 10, 1))
    found = state.on_uid(20, 1, python, no_command)
    assert [(t.rule_id, t.evidence["process"]["how"]) for t in found] == [
        ("priv.setuid-root", "setuid() call")
    ]
    assert found[0].evidence["process"]["uid"] == 1000  # who it was, not who it became
    # a root service dropping its euid and taking it back (systemd's user manager)
    state.creds[21] = (ROOT, ROOT)
    systemd = (64, 50, 10, 1)
    assert (
        state.on_uid(21, 1, IdChange(ROOT, CODE, "/usr/lib/systemd/systemd", systemd), no_command)
        == []
    )
    assert (
        state.on_uid(21, 1, IdChange(CODE, ROOT, "/usr/lib/systemd/systemd", systemd), no_command)
        == []
    )


def test_unknown_before_uses_the_parent_and_host_entry_is_not_an_escalation() -> None:
    state = watch()
    # no uid event seen for it: its parent's uids stand in (here: this test, uid 0 on the
    # host, as `incus exec` starts as host root)
    change = IdChange(ROOT, ROOT, "/tmp/anything", (64, 60, 1, 1))
    assert state.on_uid(30, os.getpid(), change, no_command) == []
    # nothing known of it and its parent gone: LXC's attach helper (host root, run from a
    # memfd copy) switching to the container's root is not a container user's escalation
    lxc = IdChange(0, ROOT, "/memfd:liblxc (deleted)", (9, 9, 1, 1))
    assert state.on_uid(31, 2**22 + 7, lxc, no_command) == []


def test_a_process_gone_before_its_program_was_read() -> None:
    state = watch()
    state.creds[40] = (CODE, CODE)
    found = state.on_uid(40, 1, IdChange(CODE, ROOT, "", None), no_command)
    assert [(t.rule_id, t.level) for t in found] == [("priv.root-unverified", "warning")]
    # nothing known before either: nothing to judge
    assert state.on_uid(41, 2**22 + 7, IdChange(CODE, ROOT, "", None), no_command) == []


def test_su_that_never_switched_is_high_at_its_exit_and_a_successful_one_is_not() -> None:
    state = watch()
    state.creds[50] = (CODE, CODE)
    found = state.on_uid(50, 1, IdChange(CODE, ROOT, "/usr/bin/su", SU), no_command)
    assert [(t.rule_id, t.level) for t in found] == [("priv.su", "info")]
    failed = state.on_exit(50, 1 << 8, lambda pid: "su -c id root")
    assert [(t.rule_id, t.level) for t in failed] == [("priv.su-failed", "high")]
    assert failed[0].evidence["process"]["exit"] == 1
    assert failed[0].evidence["auth"]["line"] == "su -c id root"
    # su to another user (here the caller itself: `su - code`) seeks no root: a WARNING
    state.creds[51] = (CODE, CODE)
    state.on_uid(51, 1, IdChange(CODE, ROOT, "/usr/bin/su", SU), no_command)
    to_self = state.on_exit(51, 1 << 8, lambda pid: "su - code -c true")
    assert [(t.rule_id, t.level) for t in to_self] == [("priv.su-failed", "warning")]
    assert privilege.su_target(["su", "-s", "/bin/sh", "-c", "id"]) == "root"
    # a command with spaces (and a redirection) for -c is one argument: the target is root
    state.creds[52] = (CODE, CODE)
    state.on_uid(52, 1, IdChange(CODE, ROOT, "/usr/bin/su", SU), no_command)
    argv = ["su", "-c", "id -u > /tmp/got-root", "root"]
    quoted = state.on_exit(52, 1 << 8, lambda pid: " ".join(argv), lambda pid: argv)
    assert [(t.rule_id, t.level) for t in quoted] == [("priv.su-failed", "high")]
    # success: a child of su takes the target's identity, then su exits with the shell's
    # status (non-zero here)
    state.creds[60] = (CODE, CODE)
    state.on_uid(60, 1, IdChange(CODE, ROOT, "/usr/bin/su", SU), no_command)
    assert state.on_uid(61, 60, IdChange(ROOT, ROOT, "/usr/bin/su", SU), no_command) == []
    assert state.on_exit(60, 3 << 8, no_command) == []
    assert state.on_exit(61, 0, no_command) == []


def test_auth_lines() -> None:
    judge = privilege.judge_line
    sudo_log = privilege.SUDO_LOG
    failed = judge("Dec  7 : nobody : a password is required ; COMMAND=/usr/bin/id", sudo_log, True)
    assert failed is not None and (failed.rule_id, failed.level) == ("auth.failed", "high")
    assert failed.evidence["auth"]["pattern"] == "password required"
    for line, pattern in (
        ("Dec 7 : eve : user NOT in sudoers ; TTY=pts/0 ; COMMAND=/bin/sh", "not in sudoers"),
        ("Dec 7 : eve : 3 incorrect password attempts ; COMMAND=/bin/sh", "incorrect password"),
        ("Dec 7 : code : command not allowed ; COMMAND=/bin/sh", "command not allowed"),
    ):
        threat = judge(line, sudo_log, True)
        assert threat is not None and threat.evidence["auth"]["pattern"] == pattern, line
    syslog = "/var/log/auth.log"
    su = judge("Dec 7 h su[88]: FAILED SU (to root) code on pts/0", syslog, False)
    assert su is not None and su.evidence["auth"]["pattern"] == "FAILED SU"
    pam = "Dec 7 h su[88]: pam_unix(su:auth): authentication failure; logname=code uid=1000"
    assert judge(pam, syslog, False) is not None
    command = "Dec  7 : code : PWD=/tmp ; USER=root ; COMMAND=/usr/bin/apt-get install -y jq"
    info = judge(command, sudo_log, True)
    assert info is not None and (info.rule_id, info.level) == ("auth.sudo", "info")
    # sudo's syslog lines are not counted twice when coi's sudo log exists
    assert judge("Dec 7 h sudo: code : COMMAND=/usr/bin/id", syslog, False) is None
    assert judge("Dec 7 h sudo: code : COMMAND=/usr/bin/id", syslog, True) is not None
    assert judge("Dec 7 h CRON[5]: session opened", syslog, True) is None
    hostile = judge("x : a password is required \x1b[2J" + "A" * 5000, sudo_log, True)
    assert hostile is not None and "\x1b" not in hostile.description
    assert len(hostile.evidence["auth"]["line"]) <= privilege.EVIDENCE_LINE


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    (tmp_path / "var" / "log").mkdir(parents=True)
    return tmp_path


def read(
    fake_root: Path, tail: privilege.LogTail | None, since: float = 0.0
) -> tuple[privilege.LogTail | None, list[str]]:
    """What the daemon does each pass: the log folder opened from the root without
    following links, then the file read through it."""
    root = os.open(fake_root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        log_dir = privilege.open_path(root, privilege.LOG_DIR)
    except OSError:
        return tail, []
    finally:
        os.close(root)
    try:
        return privilege.read_new(log_dir, "coi-sudo.log", tail, since)
    finally:
        os.close(log_dir)


def test_tail_reads_complete_lines_from_where_it_left(fake_root: Path) -> None:
    log = fake_root / "var/log/coi-sudo.log"
    log.write_bytes(b"one\ntwo\nthr")
    tail, lines = read(fake_root, None)
    assert lines == ["one", "two"] and tail is not None
    with log.open("ab") as f:
        f.write(b"ee\nfour\n")
    tail, lines = read(fake_root, tail)
    assert lines == ["three", "four"]
    tail, lines = read(fake_root, tail)
    assert lines == []
    log.write_bytes(b"new\n")  # truncated (logrotate copytruncate): from the start
    tail, lines = read(fake_root, tail)
    assert lines == ["new"]
    log.rename(log.with_name("coi-sudo.log.1"))  # rotated: a new file at the name
    log.write_bytes(b"rotated\n")
    tail, lines = read(fake_root, tail)
    assert lines == ["rotated"]


def test_a_file_older_than_the_daemon_is_read_from_its_end(fake_root: Path) -> None:
    log = fake_root / "var/log/coi-sudo.log"
    log.write_bytes(b"reported before a restart\n")
    tail, lines = read(fake_root, None, since=time.time() + 60)
    assert lines == [] and tail is not None and tail.offset == log.stat().st_size
    with log.open("ab") as f:
        f.write(b"after\n")
    assert read(fake_root, tail)[1] == ["after"]


def test_a_huge_log_is_read_in_bounded_chunks(fake_root: Path) -> None:
    log = fake_root / "var/log/coi-sudo.log"
    line = b"x" * 100 + b"\n"
    log.write_bytes(line * (privilege.READ_CHUNK // len(line) * 3))
    tail, lines = read(fake_root, None)
    assert tail is not None and tail.offset == privilege.READ_CHUNK
    total = len(lines)
    while lines:
        tail, lines = read(fake_root, tail)
        total += len(lines)
    assert total == privilege.READ_CHUNK // len(line) * 3
    log.write_bytes(b"y" * (privilege.LINE_LIMIT * 5) + b"\n")  # one endless line: cut
    tail, lines = read(fake_root, None)
    tail, more = read(fake_root, tail)
    assert [len(x) for x in lines + more] == [privilege.LINE_LIMIT]


def test_symlinks_fifos_and_devices_are_never_read(fake_root: Path, tmp_path: Path) -> None:
    log = fake_root / "var/log/coi-sudo.log"
    secret = tmp_path / "host-secret"
    secret.write_text("a password is required\n")
    log.symlink_to(secret)  # a link at the file
    assert read(fake_root, None) == (None, [])
    log.unlink()
    os.mkfifo(log)  # a FIFO: never opened for reading (it would block or be fed)
    started = time.monotonic()
    assert read(fake_root, None) == (None, [])
    assert time.monotonic() - started < 1
    log.unlink()
    shutil.rmtree(fake_root / "var/log")
    (fake_root / "var/log").symlink_to(tmp_path)  # a link on the way
    (tmp_path / "coi-sudo.log").write_text("a password is required\n")
    assert read(fake_root, None) == (None, [])


def test_setuid_programs_of_a_root(tmp_path: Path) -> None:
    """The walk over a real tree: setuid and setgid files in the standard directories
    (two levels), not elsewhere, no symlinked directory entered."""
    for folder in ("usr/bin", "usr/lib/helper/deeper/deepest", "elsewhere"):
        (tmp_path / folder).mkdir(parents=True)
    for path, mode in (
        ("usr/bin/sudo", 0o4755),
        ("usr/bin/plain", 0o755),
        ("usr/lib/helper/chkpwd", 0o2755),
        ("usr/lib/helper/deeper/deepest/too-deep", 0o4755),
        ("elsewhere/x", 0o4755),
    ):
        (tmp_path / path).write_text("#")
        os.chmod(tmp_path / path, mode)
    (tmp_path / "sbin").symlink_to("elsewhere")
    (tmp_path / "bin").symlink_to("/usr/bin")  # absolute: would be the host's
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = privilege.setuid_programs(root)
    finally:
        os.close(root)
    assert sorted(p for _s, _m, p in found.values()) == ["/usr/bin/sudo", "/usr/lib/helper/chkpwd"]
    info = os.stat(tmp_path / "usr/bin/sudo")
    assert found[(info.st_dev, info.st_ino)][:2] == (info.st_size, info.st_mtime_ns)


def test_the_session_hook_installs_the_drop_in_only_with_monitoring_on() -> None:
    from types import SimpleNamespace

    from coi_tui.incus import IncusError
    from coi_tui.sessions.sudo_log_hook import HOOK

    pushed: list[tuple[str, str, bytes, dict[str, int]]] = []

    class FakeIncus:
        def push_file(self, name: str, path: str, content: bytes, **owner: int) -> None:
            if name == "no-sudo":
                raise IncusError("no such directory")
            pushed.append((name, path, content, owner))

    def ctx(container: str, enabled: bool) -> Any:
        settings = SimpleNamespace(monitoring_enabled=enabled)
        manager = SimpleNamespace(incus=FakeIncus(), settings=settings)
        return SimpleNamespace(manager=manager, session=SimpleNamespace(container=container))

    HOOK.before_agent(ctx("off", False))
    assert pushed == []
    HOOK.before_agent(ctx("no-sudo", True))  # an image without sudo: left alone
    HOOK.before_agent(ctx("on", True))
    assert pushed == [
        (
            "on",
            privilege.SUDOERS_DROP_IN,
            privilege.SUDOERS_TEXT.encode(),
            {"uid": 0, "gid": 0, "mode": 0o440},
        )
    ]
    assert f"Defaults logfile={privilege.SUDO_LOG}\n" in privilege.SUDOERS_TEXT


@pytest.mark.skipif(shutil.which("visudo") is None, reason="no visudo on this machine")
def test_the_drop_in_is_valid_sudoers(tmp_path: Path) -> None:
    drop_in = tmp_path / "zz-coi-log"
    drop_in.write_text(privilege.SUDOERS_TEXT)
    drop_in.chmod(0o440)
    checked = subprocess.run(
        ["visudo", "-c", "-f", str(drop_in)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
