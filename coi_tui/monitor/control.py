"""Starting and stopping the daemon from `coi` (hook, `coi monitor --daemon`, tests), and the
one privileged path for non-root users.

Privilege: the daemon needs root. `coi setup` (run with sudo) installs
- /usr/local/lib/coi-monitor/coi_tui: a root-owned copy of this package,
- /usr/local/libexec/coi-monitor-daemon: a root-owned launcher that runs that copy with
  `python3 -I` (no user module path or environment reaches it), serving the COI home of the
  invoking user ($SUDO_USER's ~/.coi, files owned by that user): no arguments are accepted,
- /etc/sudoers.d/coi-monitor: `%incus-admin ALL=(root) NOPASSWD: <launcher>` and nothing more.
A non-root `coi` then starts the daemon with `sudo -n <launcher>`.

The daemon loads no settings itself: `start` resolves them here, as the user
(`config.load_settings`, the schema's defaults) and hands them over in
`$COI_HOME/monitor.config.json` (monitor/config.py) before it starts the daemon.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

from coi_tui.config.settings import load_settings
from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home, logs_dir
from coi_tui.core.privilege import ADMIN_GROUP, SUDOERS_DIR, install_root_file, install_sudo_rule
from coi_tui.monitor.config import (
    DAEMON_SETTINGS,
    DaemonSettings,
    daemon_settings_text,
    load_monitor_config,
)
from coi_tui.monitor.events import audit_dir
from coi_tui.monitor.pidfile import open_log as open_daemon_log
from coi_tui.monitor.pidfile import running_pid

# What the root daemon is made of: the only modules of the package it imports (checked by
# tests/unit/test_daemon_stdlib.py), and all `coi setup` copies for it.
DAEMON_MODULES = (
    "coi_tui",
    "coi_tui.core",
    "coi_tui.core.cgroups",
    "coi_tui.core.nofollow",
    "coi_tui.core.paths",
    "coi_tui.core.text",
    "coi_tui.monitor",
    "coi_tui.monitor.behaviour",
    "coi_tui.monitor.canary",
    "coi_tui.monitor.config",
    "coi_tui.monitor.daemon",
    "coi_tui.monitor.defaults",
    "coi_tui.monitor.egress",
    "coi_tui.monitor.events",
    "coi_tui.monitor.filewatch",
    "coi_tui.monitor.incus_socket",
    "coi_tui.monitor.membership",
    "coi_tui.monitor.mounts",
    "coi_tui.monitor.netlink",
    "coi_tui.monitor.pidfile",
    "coi_tui.monitor.privilege",
    "coi_tui.monitor.procfs",
    "coi_tui.monitor.rulepacks",
    "coi_tui.monitor.rules",
)
DAEMON_DATA = ("coi_tui/monitor/packs",)  # the bundled rule packs
LAUNCHER = Path("/usr/local/libexec/coi-monitor-daemon")
LIB_DIR = Path("/usr/local/lib/coi-monitor")
SUDOERS = SUDOERS_DIR / "coi-monitor"


def socket_path(home: Path | None = None) -> Path:
    return (home or coi_home()) / "monitor.sock"


def is_socket(path: Path) -> bool:
    """The daemon's socket itself is there (a symlink to something else is not it)."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def is_running(home: Path | None = None) -> bool:
    return running_pid(home or coi_home()) != 0


def prune_audit(days: int, home: Path | None = None, now: float | None = None) -> list[str]:
    """`[monitoring] audit_log_retention_days`: audit files (rotated parts too) last written
    more than `days` ago are deleted; 0 keeps them all. The names deleted."""
    if days <= 0:
        return []
    cutoff = (time.time() if now is None else now) - days * 86400
    gone = []
    folder = audit_dir(home)
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            if ".jsonl" not in entry.name or not entry.is_file(follow_symlinks=False):
                continue
            with contextlib.suppress(OSError):
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
                    gone.append(entry.name)
    return gone


def start(home: Path | None = None, wait: float = 10.0, use_sudo: bool = True) -> int:
    """Start the daemon for this COI home unless it runs; return its pid. The process started
    here exits at once (daemon.detach: the daemon is a grandchild in a session of its own,
    so it outlives the `coi` process that started it); it is reaped while waiting. Not
    root and not `use_sudo` (`[network] use_sudo = false`): sudo is never called."""
    home = home or coi_home()
    pid = running_pid(home)
    if pid:
        return pid
    hand_over_settings(home)
    if os.geteuid() == 0:
        argv = [sys.executable, "-m", "coi_tui.monitor.daemon", "--home", str(home)]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    elif not use_sudo:
        raise CoiError("the threat monitor needs root, and [network] use_sudo = false forbids sudo")
    elif LAUNCHER.exists():
        argv, env = ["sudo", "-n", str(LAUNCHER)], dict(os.environ)
    else:
        raise CoiError("the threat monitor needs root: run 'sudo coi setup' once to install it")
    log = open_log(home)
    try:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=env,
            start_new_session=True,
            cwd="/",
        )
    finally:
        os.close(log)
    deadline = time.monotonic() + wait
    sock = socket_path(home)
    while time.monotonic() < deadline:
        child.poll()  # no zombie left in a long-lived `coi`
        pid = running_pid(home)
        if pid > 0 and is_socket(sock):
            return pid
        time.sleep(0.05)
    raise CoiError(f"the threat monitor did not start: see {logs_dir() / 'monitor.log'}")


def daemon_settings(home: Path) -> DaemonSettings:
    """What the daemon of `home` runs with: the user's config of that home as `coi` reads it
    with no project (load_settings from "/"), and its deprecated monitor.toml."""
    notes: list[str] = []
    settings = load_settings(Path("/"), {**os.environ, "COI_HOME": str(home)})
    monitor = load_monitor_config(settings, warn=notes.append, home=home)
    return DaemonSettings(monitor, settings.sigma_dir, settings.gtfobins_dir, notes)


def hand_over_settings(home: Path) -> None:
    """Write the daemon's settings into `home` (DAEMON_SETTINGS), replacing the file (the
    daemon reads it without following a symlink)."""
    try:
        settings = daemon_settings(home)
    except ValueError as exc:  # the deprecated monitor.toml
        raise CoiError(f"monitor settings: {exc}") from None
    try:
        atomic_write(home / DAEMON_SETTINGS, daemon_settings_text(settings), 0o644)
    except OSError as exc:
        raise CoiError(f"cannot write {home / DAEMON_SETTINGS}: {exc.strerror or exc}") from None


def open_log(home: Path, owner: tuple[int, int] | None = None) -> int:
    """An O_APPEND fd on <home>/logs/monitor.log: as root through the daemon's no-follow
    open (pidfile.open_log: the home is a user's), else the user's own file."""
    if os.geteuid() == 0:
        return open_daemon_log(home, owner)
    return os.open(logs_dir() / "monitor.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def stop(home: Path | None = None, wait: float = 10.0) -> bool:
    home = home or coi_home()
    pid = running_pid(home)
    if pid <= 0:
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and running_pid(home):
        time.sleep(0.05)
    return True


LAUNCHER_TEXT = """#!/bin/sh
# coi threat monitor launcher (installed by 'coi setup'). Runs the root-owned copy of coi's
# monitor for the invoking user's ~/.coi; takes no arguments. The user's monitor.log is
# opened by the daemon without following a symlink (never by this shell as root).
[ "$#" -eq 0 ] || { echo "coi-monitor-daemon: takes no arguments" >&2; exit 2; }
[ -n "$SUDO_USER" ] || { echo "coi-monitor-daemon: run through sudo" >&2; exit 2; }
HOME_DIR=$(getent passwd "$SUDO_USER" | cut -d: -f6)
cd / && exec /usr/bin/python3 -I -c 'import sys; sys.path.insert(0, "{lib}"); \\
from coi_tui.monitor.daemon import launch; sys.exit(launch(sys.argv[1:]))' \\
  --home "$HOME_DIR/.coi" --owner "$SUDO_UID:$SUDO_GID" \\
  </dev/null >/dev/null 2>&1 &
"""


def install(group: str = ADMIN_GROUP) -> list[str]:
    """`coi setup` step (root only): the launcher, the daemon's copy and the sudo rule."""
    if os.geteuid() != 0:
        return ["  [skipped] threat monitor privilege path: needs root (sudo coi setup)"]
    target = LIB_DIR / "coi_tui"
    if target.exists():
        shutil.rmtree(target)
    LIB_DIR.mkdir(parents=True, exist_ok=True)
    copy_daemon(LIB_DIR)
    for path in [LIB_DIR, *LIB_DIR.rglob("*")]:
        os.chown(path, 0, 0)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    install_root_file(LAUNCHER, LAUNCHER_TEXT.replace("{lib}", str(LIB_DIR)), 0o755)
    return [
        f"  [     ok] threat monitor: {LAUNCHER}",
        install_sudo_rule(
            SUDOERS.name,
            LAUNCHER,
            "let Incus admins start coi's threat monitor for their own ~/.coi, nothing else.",
            "threat monitor sudo rule",
            group,
        ),
    ]


def copy_daemon(into: Path) -> None:
    """The daemon's modules (DAEMON_MODULES) and data, and nothing else of the package, into
    `into` (a folder that goes on sys.path)."""
    repo = Path(__file__).resolve().parents[2]
    for module in DAEMON_MODULES:
        rel = Path(*module.split("."))
        source = repo / rel / "__init__.py" if (repo / rel).is_dir() else repo / f"{rel}.py"
        target = into / source.relative_to(repo)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    for data in DAEMON_DATA:
        shutil.copytree(repo / data, into / data, dirs_exist_ok=True)
