"""The foundation against the real daemon: setup, image build cache, the Incus adapter, and the
one-line errors for a daemon that is down, a missing image and a socket we may not use."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from coi_tui.images.build import ImageBuilder, recipe_hash
from coi_tui.incus import ImageNotFound, Incus, InstanceNotFound
from tests.conftest import REPO, CoiRunner

pytestmark = pytest.mark.incus


def test_setup_is_idempotent(coi: CoiRunner, incus: Incus) -> None:
    first = coi.ok("setup")
    second = coi.ok("setup")
    assert "0 change(s)" in second.stdout, second.stdout
    assert "NAT is off" in second.stdout or "NAT on" in first.stdout
    network = incus.get_network("coibr0")
    assert network is not None
    assert network["config"]["ipv4.nat"] == "false"  # tests never enable NAT
    if shutil.which("sudo") and Path("/etc/sudoers.d").is_dir() and os.geteuid() == 0:
        # the normal path: both rules are there, valid, and name exactly coi's helpers
        for rule in ("coi-netctl", "coi-monitor"):
            assert f"sudo rule: /etc/sudoers.d/{rule}" in second.stdout, second.stdout
            check = subprocess.run(["visudo", "-cf", f"/etc/sudoers.d/{rule}"], capture_output=True)
            assert check.returncode == 0, check.stdout


# Inside a private mount namespace: /etc without sudoers.d, and (optionally) sudo and visudo
# hidden behind /dev/null, which is not executable, so the machine looks like a bare one.
BARE_MACHINE = """
set -e
cp -a /etc "$1/etc" && rm -rf "$1/etc/sudoers.d" && mount --bind "$1/etc" /etc
if [ "$2" = hide-sudo ]; then
    for bin in sudo visudo; do
        path=$(command -v "$bin" || true)
        [ -z "$path" ] || mount --bind /dev/null "$path"
        [ ! -e "/usr/sbin/$bin" ] || mount --bind /dev/null "/usr/sbin/$bin"
    done
fi
shift 2
"$@"
test ! -e /etc/sudoers.d || { echo "coi setup created /etc/sudoers.d" >&2; exit 9; }
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace needs root (CI runs as root)")
@pytest.mark.parametrize(
    ("variant", "reason"),
    [("hide-sudo", "sudo is not installed"), ("keep-sudo", "/etc/sudoers.d does not exist")],
)
def test_setup_on_a_machine_without_sudo_skips_the_sudo_rules_in_one_line(
    coi: CoiRunner, tmp_path: Path, variant: str, reason: str
) -> None:
    namespace = ["unshare", "-m", "--propagation", "private", "sh", "-c", BARE_MACHINE, "sh"]
    setup = [sys.executable, "-m", "coi_tui.cli.main", "setup"]
    result = subprocess.run(
        [*namespace, str(tmp_path), variant, *setup],
        env=coi.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    for label in ("network helper sudo rule", "threat monitor sudo rule"):
        lines = [line for line in result.stdout.splitlines() if label in line]
        assert len(lines) == 1 and "[   skip]" in lines[0] and reason in lines[0], result.stdout
    assert "Done:" in result.stdout


def test_second_build_is_cached(coi: CoiRunner, image: str, incus: Incus) -> None:
    started = time.monotonic()
    result = coi.ok("build")
    assert time.monotonic() - started < 10
    assert "up to date" in result.stdout
    assert incus.get_image(image).properties["coi.recipe"] == recipe_hash()
    assert ImageBuilder(incus, progress=lambda _: None).up_to_date(image)


def test_adapter_runs_code_user_and_workspace_files_belong_to_host_user(
    incus: Incus, image: str, run_prefix: str, tmp_path: Path
) -> None:
    name = f"{run_prefix}00000000-9"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    uid, gid = os.getuid(), os.getgid()
    incus.create_instance(
        name,
        image,
        config={"raw.idmap": f"uid {uid} 1000\ngid {gid} 1000"},
        devices={"workspace": {"type": "disk", "source": str(workspace), "path": "/workspace"}},
    )
    try:
        incus.start(name)
        result = incus.exec_capture(
            name, ["sh", "-c", "id -u; echo made > /workspace/made.txt"], user=1000
        )
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip() == "1000"
        made = workspace / "made.txt"
        assert made.read_text() == "made\n"
        assert (made.stat().st_uid, made.stat().st_gid) == (uid, gid)

        failing = incus.exec_capture(name, ["sh", "-c", "echo oops >&2; exit 3"])
        assert (failing.exit_code, failing.stderr) == (3, "oops\n")

        incus.push_file(name, "/home/code/note.txt", b"pushed", uid=1000, gid=1000)
        assert incus.pull_file(name, "/home/code/note.txt") == b"pushed"
        owner = incus.exec_capture(name, ["stat", "-c", "%u", "/home/code/note.txt"])
        assert owner.stdout.strip() == "1000"

        incus.freeze(name)
        assert incus.status(name) == "Frozen"
        incus.unfreeze(name)
        assert incus.status(name) == "Running"

        incus.create_snapshot(name, "snap0")
        assert [s["name"] for s in incus.list_snapshots(name)] == ["snap0"]
        incus.delete_snapshot(name, "snap0")
    finally:
        incus.delete_instance(name, force=True)
    with pytest.raises(InstanceNotFound):
        incus.status(name)


def test_events_stream_reports_lifecycle(incus: Incus, image: str, run_prefix: str) -> None:
    name = f"{run_prefix}00000000-8"
    seen: list[str] = []
    created = threading.Event()

    def on_event(event: dict) -> bool:
        meta = event.get("metadata") or {}
        if str(meta.get("source", "")).endswith(f"/instances/{name}"):
            seen.append(str(meta.get("action")))
            if meta.get("action") == "instance-created":
                created.set()
                return False
        return True

    subscribed = threading.Event()
    watcher = threading.Thread(
        target=incus.watch_events,
        args=(on_event,),
        kwargs={"subscribed": subscribed},
        daemon=True,
    )
    watcher.start()
    assert subscribed.wait(10), "events websocket did not connect"
    try:
        incus.create_instance(name, image)
        assert created.wait(15), f"no instance-created event, saw {seen}"
    finally:
        incus.delete_instance(name, force=True)


def test_missing_image_is_a_clear_error(incus: Incus, coi: CoiRunner, workspace: Path) -> None:
    with pytest.raises(ImageNotFound, match="coi build"):
        incus.require_image("coi-no-such-image")
    result = coi("run", "-w", str(workspace), "--image", "coi-no-such-image", "--", "true")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "coi build" in lines[0], result.stderr


@pytest.mark.parametrize("command", [["list"], ["run", "--", "true"], ["setup"]])
def test_daemon_down_is_one_line_and_exit_1(
    coi: CoiRunner, workspace: Path, tmp_path: Path, command: list[str]
) -> None:
    env = {"INCUS_SOCKET": str(tmp_path / "no-daemon.socket")}
    result = coi(*command, cwd=workspace, env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Incus is not running" in lines[0] and "start" in lines[0]
