"""The root daemon kills a container for a user: the session is saved into that user's COI
home and everything there belongs to the user, not to root. Since issue 18 the daemon only
freezes, tags and force-stops; the session's supervisor, running as the user (as `coi shell`
starts it), saves and deletes. Driven with the daemon's --owner, as the sudo launcher runs
it, and with the settings `coi` hands over (monitor.config.json)."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cleanup import cleanup_test_leftovers
from tests.integration.test_monitor import GATEWAY, Listener, Subscriber, wait_until

REPO = Path(__file__).resolve().parents[2]
OWNER = (4242, 4343)  # no such user needed: ownership is what is checked

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the monitor daemon needs root")


@pytest.fixture
def daemon_home(tmp_path: Path, run_prefix: str, incus: Any) -> Iterator[tuple[Path, str, int]]:
    # a folder the user (OWNER) can reach: pytest's own are root's alone
    base = Path(tempfile.mkdtemp(prefix="coi-kill-owner-"))
    base.chmod(0o711)
    home = base / ".coi"
    home.mkdir()
    # a C2 port of our own choosing (free now), so parallel runs on one host never collide
    # (a plain bind: a Listener's accept thread would keep the port listening after close)
    with socket.socket() as probe:
        probe.bind((GATEWAY, 0))
        port = probe.getsockname()[1]
    (home / "config.toml").write_text(f"[monitoring]\nc2_ports = [{port}]\n")
    prefix = f"{run_prefix}o"
    env = {**os.environ, "COI_HOME": str(home), "COI_CONTAINER_PREFIX": prefix}
    env["PYTHONPATH"] = str(REPO)
    env.pop("COI_CONFIG", None)
    # what `coi` hands the daemon before it starts it (the daemon reads no config itself)
    hand_over = "from coi_tui.monitor.control import hand_over_settings; hand_over_settings("
    subprocess.run([sys.executable, "-c", f"{hand_over}__import__('pathlib').Path({str(home)!r}))"],
                   env=env, check=True, timeout=60)  # fmt: skip
    argv = [sys.executable, "-m", "coi_tui.monitor.daemon", "--home", str(home)]
    argv += ["--owner", f"{OWNER[0]}:{OWNER[1]}"]
    # the daemon detaches (daemon.detach): the process started here exits at once
    # (no pipes: the daemon keeps what it inherited, so a pipe would never end)
    errors = tmp_path / "daemon.err"
    with errors.open("w") as err:
        started = subprocess.run(argv, env=env, cwd="/", stdout=err, stderr=err, timeout=30)
    assert started.returncode == 0, errors.read_text()
    pid = 0
    try:
        wait_until(lambda: (home / "monitor.sock").exists(), 20, "the daemon's socket")
        pid = int((home / "monitor.pid").read_text())
        yield home, prefix, port
    finally:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not os.path.exists(f"/proc/{pid}"), 15, "the daemon to stop")
        cleanup_test_leftovers(incus, prefix)
        shutil.rmtree(base, ignore_errors=True)


def supervise_as_owner(home: Path, prefix: str, name: str) -> subprocess.Popen[bytes]:
    """The session's supervisor, as `coi shell` starts it, run by the user (OWNER, in the
    Incus admin group), with the system's python3 (the venv's lies under /root) and a copy
    of the package the user can read (the checkout may lie in a folder only root enters)."""
    library = home.parent / "lib"
    shutil.copytree(
        REPO / "coi_tui", library / "coi_tui", ignore=shutil.ignore_patterns("__pycache__")
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home.parent),
        "COI_HOME": str(home),
        "COI_CONTAINER_PREFIX": prefix,
        "PYTHONPATH": str(library),
    }
    return subprocess.Popen(
        ["/usr/bin/python3", "-m", "coi_tui.sessions.supervisor", name],
        env=env,
        cwd=home.parent,
        user=OWNER[0],
        group=OWNER[1],
        extra_groups=[grp.getgrnam("incus-admin").gr_gid],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_session_data_saved_by_a_kill_belongs_to_the_user(
    daemon_home: tuple[Path, str, int], incus: Any, image: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from coi_tui.sessions.store import SessionMeta, SessionStore
    from coi_tui.tools import get_tool

    home, prefix, port = daemon_home
    events = Subscriber(home / "monitor.sock")
    name = f"{prefix}{uuid.uuid4().hex[:6]}"
    session = str(uuid.uuid4())
    # the session's metadata, as `coi shell` (run by the user) writes it at start
    monkeypatch.setenv("COI_HOME", str(home))
    meta = SessionMeta(session, name, False, str(home.parent), tool="claude")
    SessionStore(get_tool("claude")).write_meta(meta)
    for path in [home, *home.rglob("*")]:
        os.lchown(path, *OWNER)
    config = {
        "user.coi.tool": "claude",
        "user.coi.session_id": session,
        "user.coi.workspace": str(home.parent),
    }
    nic = {"type": "nic", "network": "coibr0", "name": "eth0"}
    incus.create_instance(name, image, config=config, devices={"eth0": nic}, start=True)
    supervisor = supervise_as_owner(home, prefix, name)
    events.wait(lambda m: m.get("type") == "watch" and m.get("container") == name, 60, "watch")
    wait_until(lambda: incus.get_instance(name, with_state=True).ipv4, 60, "an address")
    setup = "mkdir -p /home/code/.claude && echo '{\"x\": 1}' > /home/code/.claude/settings.json"
    assert incus.exec_capture(name, ["bash", "-c", setup], timeout=60).exit_code == 0
    c2 = Listener(port)
    try:
        code = (
            f"import socket, time; socket.create_connection(('{GATEWAY}', {port})); time.sleep(30)"
        )
        subprocess.Popen(
            ["incus", "exec", name, "--", "python3", "-c", code],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        record = events.wait(
            lambda m: m.get("container") == name and m.get("rule_id") == "net.c2-port", 20, "c2"
        )
        assert record["action"] == "killed"

        def gone() -> bool:
            try:
                incus.get_instance(name)
            except Exception:
                return True
            return False

        wait_until(gone, 60, f"{name} to be deleted")
        # by the supervisor, which then ends
        assert supervisor.wait(timeout=60) == 0
    finally:
        c2.close()
        if supervisor.poll() is None:
            supervisor.kill()
    saved = [p for p in home.rglob("settings.json") if session in str(p)]
    assert saved, sorted(str(p) for p in home.rglob("*"))
    assert json.loads(saved[0].read_text()) == {"x": 1}

    def not_owned() -> list[tuple[str, int]]:
        return [
            (str(p), p.lstat().st_uid)
            for p in [home, *home.rglob("*")]
            if (p.lstat().st_uid, p.lstat().st_gid) != OWNER
        ]

    # the supervisor saved as the user; what the root daemon made there it handed over
    wait_until(lambda: not not_owned(), 10, f"the user to own everything: {not_owned()}")
