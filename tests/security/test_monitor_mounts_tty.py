"""Two holes an adversarial review found in the monitor, each attacked from inside a real
container by its root, against a real daemon:

- the daemon as a terminal's controlling process: it ran as a session leader with no
  controlling terminal, so opening a tty without O_NOCTTY made it its controlling terminal.
  Container root bind-mounts the slave of a pty of its own over ~/.bashrc, writes the file
  (through a descriptor opened before the mount) so the daemon reads ~/.bashrc to judge
  it, and types ^C ^\\ ^Z on the master: SIGINT stopped the daemon ("monitor stopped"), and
  every session of that COI home went unwatched. The daemon now never leads a session
  (monitor/daemon.py detach) and ignores what only a terminal sends;
- a mount over a watched path: fanotify marks are on inodes, so a tmpfs over
  /etc/sudoers.d took every write there out of sight. The mount table is now compared on
  every pass (monitor/mounts.py): CRITICAL file.mount-over, the container killed; a mount
  elsewhere (tmpfs on /mnt/scratch) is INFO only.

HIGH is "alert" here (not "pause"), so the writer of ^C keeps running after the daemon
judged the ~/.bashrc write. The terminal attack has a daemon of its own where CRITICAL is
"alert" too: its mount is itself a mount over a watched file, and a kill for it that came
first (it does, now and then) would leave the write unjudged and the attack untried.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_monitor import Monitor, run_file, running_monitor, wait_until

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")


@pytest.fixture(scope="module")
def mounts_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(
        f"{run_prefix}t", incus, image, tmp_path_factory, '[monitoring.actions]\nhigh = "alert"\n'
    ) as monitor:
        yield monitor


@pytest.fixture(scope="module")
def tty_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    actions = '[monitoring.actions]\nhigh = "alert"\ncritical = "alert"\n'
    with running_monitor(f"{run_prefix}y", incus, image, tmp_path_factory, actions) as monitor:
        yield monitor


@pytest.fixture(scope="module")
def box(mounts_mon: Monitor) -> str:
    """One container for what must still be detected after the terminal attack, and for
    the benign mount."""
    return mounts_mon.container()


TTY_ATTACK = """import os, subprocess, time
target = "/home/code/.bashrc"
master, slave = os.openpty()
os.set_blocking(master, False)
kept = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
typist = os.fork()
if typist == 0:
    end = time.monotonic() + 3
    while time.monotonic() < end:
        try:
            os.write(master, b"\\x03\\x1c\\x1a")  # ^C ^\\ ^Z
        except OSError:
            pass
        time.sleep(0.005)
    os._exit(0)
subprocess.run(["mount", "--bind", os.ttyname(slave), target], check=True)
# the original file's write event: the daemon judges it by opening the path, now the pty
os.write(kept, b"\\n# judged\\n")
os.waitpid(typist, 0)
"""


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def daemon_pid(mon: Monitor) -> int:
    return int((mon.home / "monitor.pid").read_text())


def test_a_container_pty_never_becomes_the_daemons_terminal(tty_mon: Monitor) -> None:
    mon = tty_mon
    box = mon.container()
    pid = daemon_pid(mon)
    attacker = mon.container()
    mon.trigger(attacker, run_file("/tmp/tty.py", TTY_ATTACK, "python3"))
    # the write is judged by opening the path the pty is mounted on (before the fix the
    # daemon died there, between the read and the record)
    judged = {"file.startup-write"}
    wait_until(
        lambda: not alive(pid) or any(t["rule_id"] in judged for t in mon.events.threats(attacker)),
        20,
        "the ~/.bashrc write judged",
    )
    assert alive(pid), "the daemon died: a container's pty became its controlling terminal"
    mon.threat(attacker, judged)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    state, session, tty = fields[0], int(fields[3]), int(fields[4])
    assert tty == 0, f"the daemon has a controlling terminal ({tty:#x}), state {state}"
    assert session != pid, "the daemon leads its session"
    # the mount itself is one over a watched file (killed where CRITICAL is "kill", as in
    # the next test)
    over = mon.threat(attacker, {"file.mount-over"})
    assert over["evidence"]["mount"]["point"] == "/home/code/.bashrc", over["evidence"]
    assert over["level"] == "critical" and over["action"] == "alerted", over
    # still running, still detecting
    mon.sh(box, "cat /etc/shadow > /dev/null")
    mon.threat(box, {"file.shadow-read"})
    os.kill(pid, 0)
    assert daemon_pid(mon) == pid
    assert "monitor stopped" not in (mon.home / "logs" / "monitor.log").read_text()


def test_tmpfs_over_sudoers_d_is_critical_and_killed(mounts_mon: Monitor) -> None:
    mon = mounts_mon
    name = mon.container()
    mon.trigger(
        name,
        "mount -t tmpfs none /etc/sudoers.d && "
        "echo 'code ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/zz-agent && sleep 300",
    )
    record = mon.threat(name, {"file.mount-over"})
    assert record["level"] == "critical" and record["category"] == "persistence"
    mount = record["evidence"]["mount"]
    assert mount["point"] == "/etc/sudoers.d" and mount["fstype"] == "tmpfs", mount
    mon.assert_status(name, "Gone")


def test_a_mount_elsewhere_is_info_only(mounts_mon: Monitor, box: str) -> None:
    mon = mounts_mon
    mon.sh(
        box, "mkdir -p /mnt/scratch && mount -t tmpfs none /mnt/scratch && echo x > /mnt/scratch/f"
    )
    record = mon.events.wait(
        lambda m: (
            m.get("type") == "threat"
            and m.get("container") == box
            and m.get("rule_id") == "file.mount"
            and m.get("evidence", {}).get("mount", {}).get("point") == "/mnt/scratch"
        ),
        20,
        "the scratch mount recorded",
    )
    assert record["level"] == "info"
    # a pass after it: nothing of this mount above INFO, and the container still runs
    wait_until(lambda: mon.incus.status(box) == "Running", 5, "running")
    mounts = [t for t in mon.events.threats(box) if t.get("rule_id", "").startswith("file.mount")]
    assert all(t["level"] == "info" for t in mounts), mounts
