"""The monitor's one privileged path, driven as a non-root user in incus-admin: `coi setup`'s
monitor step installs a root-owned launcher and a sudo rule for exactly it; the user starts
the root daemon through `sudo -n` (for their own ~/.coi), and nothing broader is allowed."""

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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="installs a sudo rule: needs root")


def as_user(user: str, command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["su", user, "-c", command], capture_output=True, text=True, timeout=60, cwd="/"
    )


@pytest.fixture
def admin_user() -> Iterator[str]:
    name = f"coimon{uuid.uuid4().hex[:6]}"
    subprocess.run(["useradd", "-m", "-G", "incus-admin", name], check=True)
    try:
        yield name
    finally:
        home = Path(pwd.getpwnam(name).pw_dir)
        pid_file = home / ".coi" / "monitor.pid"
        if pid_file.exists():
            with_pid = int(pid_file.read_text() or 0)
            if with_pid > 0:
                os.kill(with_pid, signal.SIGTERM)
        subprocess.run(["userdel", "-r", name], capture_output=True)


def test_non_root_user_starts_the_daemon_through_the_sudo_rule(admin_user: str) -> None:
    lines = control.install()
    assert "threat monitor" in lines[0] and "sudo rule" in lines[1], lines
    rules = [line for line in control.SUDOERS.read_text().splitlines() if not line.startswith("#")]
    assert rules == [f"%incus-admin ALL=(root) NOPASSWD: {control.LAUNCHER}"]
    assert control.LAUNCHER.stat().st_uid == 0 and not control.LAUNCHER.stat().st_mode & 0o022
    home = Path(pwd.getpwnam(admin_user).pw_dir) / ".coi"
    started = as_user(admin_user, f"mkdir -p ~/.coi/logs && sudo -n {control.LAUNCHER}")
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 15
    while not (home / "monitor.sock").exists():
        assert time.monotonic() < deadline, (home / "logs" / "monitor.log").read_text()
        time.sleep(0.05)
    pid = int((home / "monitor.pid").read_text())
    with open(f"/proc/{pid}/status") as f:
        uid_line = next(line for line in f if line.startswith("Uid:"))
    assert uid_line.split()[1] == "0"  # the daemon runs as root ...
    user = pwd.getpwnam(admin_user)
    assert (home / "monitor.sock").stat().st_uid == user.pw_uid  # ... for this user's files
    # a second start is a no-op: same daemon
    as_user(admin_user, f"sudo -n {control.LAUNCHER}")
    assert int((home / "monitor.pid").read_text()) == pid
    # nothing broader: no arguments (no other home), no other command
    assert as_user(admin_user, f"sudo -n {control.LAUNCHER} --home /tmp").returncode != 0
    assert as_user(admin_user, "sudo -n /bin/true").returncode != 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    while (home / "monitor.sock").exists():
        assert time.monotonic() < deadline, "the daemon did not stop"
        time.sleep(0.05)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    from coi_tui.monitor.daemon import table_name

    assert table_name(home) not in tables
