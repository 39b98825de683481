"""Attack (issue 16, low: root code follows symlinks in ~/.coi): a user allowed to start the
root monitor through its sudo rule plants a symlink at ~/.coi/logs/monitor.log pointing at a
root-only file, then starts the daemon. The launcher used to let its shell open that path as
root (`>>`), appending the daemon's output to the target. Now the daemon opens the log
itself without following a symlink: the target is untouched and the user gets a plain log."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.monitor import control

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
        pid_file = Path(pwd.getpwnam(name).pw_dir) / ".coi" / "monitor.pid"
        if pid_file.exists() and int(pid_file.read_text() or 0) > 0:
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
        subprocess.run(["userdel", "-r", name], capture_output=True)


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
