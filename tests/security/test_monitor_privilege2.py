"""Privilege transitions (issue 17), against the real daemon and real containers: the way an
agent would try to become root, each asserted detected (HIGH) and the container paused, and
the agent's ordinary sudo asserted logged at INFO and never HIGH.

- a setuid-root copy of bash planted by root and run by the code user (uid 1000): the
  kernel's uid event names a program that is not one of the image's setuid programs;
- a python copy with file capabilities (cap_setuid) run by the code user calling
  setuid(0): no setuid bit, the same uid event;
- a setgid-shadow copy of python run by the code user: a gid event;
- sudo by a user who is not a sudoer (nobody: adding a user would trip the file watcher):
  sudo's own log (the session hook's sudoers drop-in, installed here the way the hook
  does) says "a password is required";
- su by the code user, who has no password (nor has root): su exits without switching.

The containers are launched by the shared harness (tests/integration/test_monitor.py), not
through a coi session, so the sudoers drop-in is installed by calling the hook's function.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from coi_tui.monitor.privilege import SUDO_LOG, SUDOERS_DROP_IN
from coi_tui.sessions.sudo_log_hook import install_sudo_log
from tests.integration.test_monitor import Monitor, running_monitor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")

CODE_UID = 1000
NOBODY = 65534
USER_EXEC = ("incus", "exec", "--cwd", "/tmp", "--user")


@pytest.fixture(scope="module")
def priv_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}p", incus, image, tmp_path_factory) as monitor:
        yield monitor


def as_user(mon: Monitor, name: str, script: str, uid: int = CODE_UID) -> None:
    """Run `script` as `uid` in the background, as the agent's own commands run (an exec
    into a paused container never returns)."""
    mon.triggers.append(
        subprocess.Popen(
            [*USER_EXEC, str(uid), "--group", str(uid), name, "--", "bash", "-c", script],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    )


def above_info(mon: Monitor, name: str) -> list[dict[str, Any]]:
    return [t for t in mon.events.threats(name) if t["level"] != "info"]


def test_planted_setuid_root_binary_run_by_the_agent_is_high(priv_mon: Monitor) -> None:
    mon = priv_mon
    name = mon.container()
    mon.sh(name, "cp /bin/bash /tmp/.x && chmod 4755 /tmp/.x")  # root planted it earlier
    as_user(mon, name, "/tmp/.x -p -c 'id -u > /tmp/got-root'")
    record = mon.threat(name, {"priv.setuid-root"})
    assert record["level"] == "high" and record["action"] == "paused", record
    process = record["evidence"]["process"]
    assert process["exe"] == "/tmp/.x" and process["uid"] == CODE_UID, process
    mon.assert_status(name, "Frozen")


def test_setuid_call_by_a_program_with_file_capabilities_is_high(priv_mon: Monitor) -> None:
    """No setuid bit anywhere: a python copy given cap_setuid by root, run by the code
    user, calls setuid(0). The kernel's uid event still names it."""
    mon = priv_mon
    name = mon.container()
    mon.sh(name, "cp /usr/bin/python3 /tmp/py && setcap cap_setuid+ep /tmp/py")
    as_user(mon, name, '/tmp/py -c \'import os; os.setuid(0); open("/tmp/got-root", "w")\'')
    record = mon.threat(name, {"priv.setuid-root"})
    assert record["level"] == "high" and record["action"] == "paused", record
    process = record["evidence"]["process"]
    assert process["exe"] == "/tmp/py" and process["how"] == "setuid() call", process
    assert process["uid"] == CODE_UID, process
    mon.assert_status(name, "Frozen")


def test_planted_setgid_shadow_program_run_by_the_agent_is_high(priv_mon: Monitor) -> None:
    """A copy of python given group shadow and the setgid bit by root: the code user reads
    the password hashes with it. The kernel's gid event names it. (A program that exits
    within about a millisecond can be gone before its program is read: then it is only a
    WARNING, see priv.setgid-unverified.)"""
    mon = priv_mon
    name = mon.container()
    shadow = int(mon.sh(name, "getent group shadow | cut -d: -f3"))
    mon.sh(name, "cp /usr/bin/python3 /tmp/c && chgrp shadow /tmp/c && chmod 2755 /tmp/c")
    as_user(mon, name, "/tmp/c -c 'print(open(\"/etc/shadow\").read())' > /tmp/hashes")
    record = mon.threat(name, {"priv.setgid"})
    assert record["level"] == "high" and record["action"] == "paused", record
    process = record["evidence"]["process"]
    assert process["exe"] == "/tmp/c" and process["uid"] == CODE_UID, process
    assert process["egid"] == shadow, process
    mon.assert_status(name, "Frozen")


def test_failed_sudo_is_high_from_sudos_own_log(priv_mon: Monitor) -> None:
    mon = priv_mon
    name = mon.container()
    assert install_sudo_log(mon.incus, name)
    as_user(mon, name, "sudo -n cat /etc/shadow", uid=NOBODY)  # not a sudoer
    record = mon.threat(name, {"auth.failed"})
    assert record["level"] == "high" and record["action"] == "paused", record
    auth = record["evidence"]["auth"]
    assert auth["log_file"] == SUDO_LOG and auth["pattern"] == "password required", auth
    assert "nobody" in auth["line"] and "COMMAND=/usr/bin/cat /etc/shadow" in auth["line"]
    # sudo itself is one of the image's setuid programs: the attempt is HIGH for its
    # failure, not for the uid change
    assert not [t for t in mon.events.threats(name) if t["rule_id"].startswith("priv.setuid")]
    mon.assert_status(name, "Frozen")


def test_failed_su_by_the_agent_is_high(priv_mon: Monitor) -> None:
    mon = priv_mon
    name = mon.container()
    as_user(mon, name, "echo guess | su -c 'id -u > /tmp/got-root' root")
    started = mon.threat(name, {"priv.su"})
    assert started["level"] == "info" and started["evidence"]["process"]["uid"] == CODE_UID
    record = mon.threat(name, {"priv.su-failed"}, timeout=30)  # PAM waits ~2 s on a failure
    assert record["level"] == "high" and record["action"] == "paused", record
    assert record["evidence"]["process"]["uid"] == CODE_UID
    assert "su -c" in record["evidence"]["auth"]["line"]
    mon.assert_status(name, "Frozen")


def test_the_agents_own_sudo_is_info_never_high(priv_mon: Monitor) -> None:
    mon = priv_mon
    name = mon.container()
    assert install_sudo_log(mon.incus, name)
    checked = mon.incus.exec_capture(name, ["visudo", "-c", "-f", SUDOERS_DROP_IN])
    assert checked.exit_code == 0, checked.stdout + checked.stderr
    assert mon.sh(name, f"stat -c %a:%U {SUDOERS_DROP_IN}").strip() == "440:root"
    # what an agent does with its passwordless sudo, and the image's other setuid
    # programs on its own things; then a marker command whose log line ends the wait
    as_user(
        mon,
        name,
        "sudo true && sudo apt-get --version >/dev/null && mount >/dev/null"
        " && cat ~/.bashrc >/dev/null && sudo -u root env true"
        " && sudo /usr/bin/printf done-marker",
    )
    mon.events.wait(
        lambda m: (
            m.get("type") == "threat"
            and m.get("container") == name
            and "done-marker" in m.get("description", "")
        ),
        20,
        "the marker's sudo line",
    )
    infos = [t for t in mon.events.threats(name) if t["rule_id"] == "auth.sudo"]
    assert any("COMMAND=/usr/bin/apt-get --version" in t["description"] for t in infos), infos
    assert all(t["level"] == "info" and t["action"] == "logged" for t in infos)
    assert above_info(mon, name) == []
    assert mon.incus.status(name) == "Running"
