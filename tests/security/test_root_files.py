"""Attack (issue 16, low: root code follows symlinks in ~/.coi): a user allowed to start the
root monitor through its sudo rule plants a symlink at ~/.coi/logs/monitor.log pointing at a
root-only file, then starts the daemon. The launcher used to let its shell open that path as
root (`>>`), appending the daemon's output to the target. Now the daemon opens the log
itself without following a symlink: the target is untouched and the user gets a plain log."""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.monitor import control
from coi_tui.monitor.pidfile import running_pid

pytestmark = [
    pytest.mark.incus,
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a sudo rule: needs root"),
]


def as_user(user: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["su", user, "-c", command], capture_output=True, text=True, timeout=60, cwd="/"
    )


@pytest.fixture
def admin_user() -> Iterator[str]:
    name = f"coirf{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-m", "-G", "incus-admin", name], check=True)
    try:
        yield name
    finally:
        pid = running_pid(Path(pwd.getpwnam(name).pw_dir) / ".coi")  # never follows a link
        if pid > 0:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        subprocess.run(["userdel", "-r", name], capture_output=True)


def root_only_file(path: Path) -> os.stat_result:
    """A file only root may read or write; the user can name it (its folder is 0755)."""
    path.write_text("root secret\n")
    path.chmod(0o600)
    path.parent.chmod(0o755)
    return path.stat()


def assert_untouched(path: Path, before: os.stat_result) -> None:
    after = path.stat()
    assert path.read_text() == "root secret\n", path
    assert (after.st_uid, after.st_gid, after.st_mode, after.st_size) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
        before.st_size,
    ), path


def start_as(user: str, home: Path) -> None:
    """Start the root monitor through its sudo rule, as `user`; wait for its socket."""
    started = as_user(user, f"sudo -n {control.LAUNCHER}")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 15
    while not control.is_socket(home / "monitor.sock"):
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)


def test_the_launcher_does_not_follow_a_planted_log_symlink(
    admin_user: str, tmp_path: Path
) -> None:
    if not Path("/usr/bin/sudo").exists():
        pytest.skip("no sudo on this machine: the launcher path does not exist")
    control.install()
    target = tmp_path / "root-only"
    target.write_text("root secret\n")
    target.chmod(0o600)
    tmp_path.chmod(0o755)  # the user can name the target, not read or write it
    before = target.stat()
    home = Path(pwd.getpwnam(admin_user).pw_dir) / ".coi"
    planted = as_user(admin_user, f"mkdir -p ~/.coi/logs && ln -s {target} ~/.coi/logs/monitor.log")
    assert planted.returncode == 0, planted.stderr
    started = as_user(admin_user, f"sudo -n {control.LAUNCHER}")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 15
    while not control.is_socket(home / "monitor.sock"):
        assert time.monotonic() < deadline, "the daemon did not start"
        time.sleep(0.05)
    log = home / "logs" / "monitor.log"
    while "monitor started" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    after = target.stat()
    assert target.read_text() == "root secret\n"
    assert (after.st_uid, after.st_mode, after.st_size) == (
        before.st_uid,
        before.st_mode,
        before.st_size,
    )
    assert not log.is_symlink() and log.stat().st_uid == pwd.getpwnam(admin_user).pw_uid


def test_the_daemon_does_not_follow_planted_lock_pid_or_stats_symlinks(
    admin_user: str, tmp_path: Path
) -> None:
    """monitor.lock used to be opened (O_CREAT) and fchowned to the user, monitor.pid
    written and chowned, and the stats dump written to monitor.stats.tmp, all as root
    through whatever symlink the user had put there: a root-only file handed to the user,
    truncated or overwritten. Each is now replaced by a plain file of the user's."""
    if not Path("/usr/bin/sudo").exists():
        pytest.skip("no sudo on this machine: the launcher path does not exist")
    control.install()
    names = ("monitor.lock", "monitor.pid", "monitor.stats.json", "monitor.stats.tmp")
    targets = {name: tmp_path / f"target-{name}" for name in names}
    before = {name: root_only_file(target) for name, target in targets.items()}
    user = pwd.getpwnam(admin_user)
    home = Path(user.pw_dir) / ".coi"
    links = " && ".join(f"ln -s {targets[name]} ~/.coi/{name}" for name in names)
    planted = as_user(admin_user, f"mkdir -p ~/.coi && {links}")
    assert planted.returncode == 0, planted.stderr
    start_as(admin_user, home)
    for name in ("monitor.lock", "monitor.pid"):
        assert_untouched(targets[name], before[name])
        info = (home / name).lstat()
        assert stat.S_ISREG(info.st_mode) and info.st_uid == user.pw_uid, name
    pid = running_pid(home)
    assert pid > 0 and Path(f"/proc/{pid}").exists()
    stats = home / "monitor.stats.json"
    os.kill(pid, signal.SIGUSR1)  # the stats dump (what bench/bench_monitor.py asks for)
    deadline = time.monotonic() + 15
    while stats.is_symlink() and os.readlink(stats) == str(targets[stats.name]):
        assert time.monotonic() < deadline, "no stats dump"
        time.sleep(0.05)
    for name in names:
        assert_untouched(targets[name], before[name])
    info = stats.lstat()
    assert stat.S_ISREG(info.st_mode) and info.st_uid == user.pw_uid
    assert isinstance(json.loads(stats.read_text()), dict)
