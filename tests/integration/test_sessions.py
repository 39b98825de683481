"""Sessions end to end on the real daemon: run, shell, slots, tmux, poweroff, resume,
persistence, and the bad inputs users actually type."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from tests.conftest import REPO, CoiRunner

pytestmark = pytest.mark.incus


def wait_for(predicate: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def capture(coi: CoiRunner, name: str) -> str:
    result = coi("tmux", "capture", name)
    return result.stdout if result.returncode == 0 else ""


def start_background(
    coi: CoiRunner, workspace: Path, *extra: str, env: dict[str, str] | None = None
) -> str:
    result = coi.ok(
        "shell", "--background", "--tool", "dummy", "-w", str(workspace), *extra, env=env
    )
    line = next(x for x in result.stderr.splitlines() if x.startswith("Container: "))
    return line.split(": ", 1)[1]


def test_run_exit_code_user_cwd_and_file_ownership(coi: CoiRunner, workspace: Path) -> None:
    result = coi(
        "run", "-w", str(workspace), "--", "sh", "-c", "id -u; pwd; echo out > made.txt; exit 42"
    )
    assert result.returncode == 42, result.stderr
    assert result.stdout.splitlines() == ["1000", "/workspace"]
    made = workspace / "made.txt"
    assert made.read_text() == "out\n"
    assert made.stat().st_uid == __import__("os").getuid()
    # Ephemeral: the container is gone afterwards.
    listed = json.loads(coi.ok("list", "--format", "json").stdout)
    assert listed["active_containers"] == []


def test_run_passes_stdin_and_agent_can_write_host_files(coi: CoiRunner, workspace: Path) -> None:
    existing = workspace / "host-file.txt"
    existing.write_text("from host\n")
    result = coi(
        "run",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "cat > piped.txt && cat host-file.txt && echo appended >> host-file.txt",
        input="through stdin\n",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from host\n"
    assert (workspace / "piped.txt").read_text() == "through stdin\n"
    assert existing.read_text() == "from host\nappended\n"


def test_concurrent_shells_get_slots_1_and_2_and_tmux_round_trips(
    coi: CoiRunner, workspace: Path
) -> None:
    cmd = [
        sys.executable,
        "-m",
        "coi_tui.cli.main",
        "shell",
        "--background",
        "--tool",
        "dummy",
        "-w",
        str(workspace),
    ]
    procs = [
        subprocess.Popen(
            cmd, cwd=REPO, env=coi.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    names = sorted(
        line.split(": ", 1)[1]
        for _, err in outputs
        for line in err.splitlines()
        if line.startswith("Container: ")
    )
    expected = [container_name(coi.prefix, str(workspace), slot) for slot in (1, 2)]
    assert names == expected

    listed = json.loads(coi.ok("list", "--format", "json").stdout)["active_containers"]
    by_name = {c["name"]: c for c in listed}
    for name in expected:
        assert by_name[name]["workspace"] == str(workspace)
        assert by_name[name]["mode"] == "ephemeral"
        assert by_name[name]["status"] == "Running"
        assert by_name[name]["tool"] == "dummy"

    name = expected[1]
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent prompt")
    assert coi.ok("tmux", "send", name, "hello from the test").stdout.startswith("Sent")
    wait_for(lambda: "You said: hello from the test" in capture(coi, name), what="the echo")
    listed_tmux = coi.ok("tmux", "list").stdout
    assert all(n in listed_tmux for n in expected)

    text = coi.ok("list").stdout
    assert text.startswith("Active Containers:") and f"  {name} (ephemeral)" in text


def test_poweroff_saves_session_and_resume_restores_it(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name = start_background(coi, workspace)
    wait_for(lambda: "Session: " in capture(coi, name), what="the agent banner")
    session_id = capture(coi, name).split("Session: ", 1)[1].split()[0]
    # as COI: a session is known from its start, before anything is saved
    early = coi.ok("info").stdout
    assert f"Session ID:     {session_id}" in early and f"Container:      {name}" in early
    assert "✗ Missing" in early
    coi.ok("tmux", "send", name, "remember this")
    wait_for(lambda: "You said: remember this" in capture(coi, name), what="the echo")

    coi("container", "exec", name, "--user", "1000", "--capture", "--", "sudo", "poweroff")
    # The session's supervisor saves the agent's state and removes the ephemeral container.
    saved = coi.home / "sessions-dummy" / session_id
    wait_for(lambda: not incus.instance_exists(name), timeout=60, what="the container removal")
    meta = json.loads((saved / "metadata.json").read_text())
    assert meta["saved_at"] and meta["workspace"] == str(workspace)
    assert list((saved / ".claude" / "projects" / "-workspace").glob("*.jsonl"))

    listed = json.loads(coi.ok("list", "--all", "--format", "json").stdout)
    assert session_id in [s["ID"] for s in listed["saved_sessions"]]
    info = coi.ok("info", session_id).stdout
    assert "✓ Present" in info and f"coi shell --resume={session_id}" in info

    resumed = start_background(coi, workspace, "--resume")
    assert resumed == name  # back in its original slot, a fresh container with the saved state
    wait_for(lambda: "Resuming session: " in capture(coi, resumed), what="the resume banner")
    screen = capture(coi, resumed)
    assert f"Resuming session: {session_id}" in screen
    assert "Restored 3 previous messages" in screen  # started + question + answer
    owner = coi.ok(
        "container",
        "exec",
        resumed,
        "--capture",
        "--",
        "stat",
        "-c",
        "%u",
        "/home/code/.claude/projects",
    )
    assert json.loads(owner.stdout)["stdout"].strip() == "1000"


def test_resume_without_saved_session_is_a_clear_error(coi: CoiRunner, workspace: Path) -> None:
    result = coi("shell", "--background", "--tool", "dummy", "-w", str(workspace), "--resume")
    assert result.returncode == 1
    assert "no previous session to resume" in result.stderr
    result = coi(
        "shell", "--background", "--tool", "dummy", "-w", str(workspace), "--resume=does-not-exist"
    )
    assert result.returncode == 1 and "session 'does-not-exist' not found" in result.stderr


def test_persistent_container_keeps_usr_local_between_sessions(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    first = coi(
        "run",
        "--persistent",
        "-w",
        str(workspace),
        "--",
        "sh",
        "-c",
        "echo installed | sudo tee /usr/local/bin/marker >/dev/null",
    )
    assert first.returncode == 0, first.stderr
    name = container_name(coi.prefix, str(workspace), 1)
    assert incus.status(name) == "Stopped"
    second = coi("run", "--persistent", "-w", str(workspace), "--", "cat", "/usr/local/bin/marker")
    assert (second.returncode, second.stdout) == (0, "installed\n"), second.stderr
    # The same container was reused, not a new slot.
    assert [i.name for i in incus.list_instances(coi.prefix)] == [name]


def test_shutdown_saves_and_deletes_and_kill_is_idempotent(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name = start_background(coi, workspace)
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent prompt")
    result = coi.ok("shutdown", name, "--timeout", "5")
    assert f"✓ Shutdown {name}" in result.stdout and "Shutdown 1 container(s)" in result.stdout
    assert not incus.instance_exists(name)
    assert list((coi.home / "sessions-dummy").glob("*/.claude"))

    other = start_background(coi, workspace)
    assert f"✓ Killed {other}" in coi.ok("kill", "--force", other).stdout
    again = coi.ok("kill", "--force", other)
    assert "already gone" in again.stdout


def test_kill_all_without_force_refuses_when_not_interactive_a_named_kill_does_not(
    coi: CoiRunner, workspace: Path
) -> None:
    """COI: `kill NAME` acts on the named container without asking; `kill --all` asks, and
    with no answer (no terminal, no pipe) it does nothing."""
    name = start_background(coi, workspace)
    result = coi("kill", "--all")
    assert result.returncode == 1 and "--force" in result.stderr
    assert coi("container", "running", name).returncode == 0
    assert f"✓ Killed {name}" in coi.ok("kill", name).stdout
    assert coi("container", "running", name).returncode != 0


@pytest.mark.parametrize("slot", ["-1", "11", "x"])
def test_bad_slot_is_a_usage_error(coi: CoiRunner, workspace: Path, slot: str) -> None:
    result = coi("run", "-w", str(workspace), f"--slot={slot}", "--", "true")
    assert result.returncode == 2
    assert "slot" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_slot_zero_means_auto_and_explicit_slot_is_used(coi: CoiRunner, workspace: Path) -> None:
    auto = coi("run", "-w", str(workspace), "--slot", "0", "--", "hostname")
    assert auto.stdout.strip() == container_name(coi.prefix, str(workspace), 1)
    explicit = coi("run", "-w", str(workspace), "--slot", "7", "--", "hostname")
    assert explicit.stdout.strip() == container_name(coi.prefix, str(workspace), 7)


@pytest.mark.parametrize(
    "command",
    [
        ["attach", "coitest-nope-1"],
        ["tmux", "send", "coitest-nope-1", "hi"],
        ["tmux", "capture", "coitest-nope-1"],
        ["shutdown", "coitest-nope-1"],
        ["container", "stop", "coitest-nope-1"],
    ],
)
def test_unknown_container_names(coi: CoiRunner, command: list[str]) -> None:
    result = coi(*command)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "coitest-nope-1" in lines[0] and "not found" in lines[0]


def test_missing_workspace(coi: CoiRunner, tmp_path: Path) -> None:
    result = coi("run", "-w", str(tmp_path / "missing"), "--", "true")
    assert result.returncode == 1
    assert "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_resume_value_needs_equals(coi: CoiRunner, workspace: Path) -> None:
    result = coi("shell", "--background", "-w", str(workspace), "--resume", "abc")
    assert result.returncode == 2 and "abc" in result.stderr


def test_shell_without_terminal_explains_background(coi: CoiRunner, workspace: Path) -> None:
    result = coi("shell", "--tool", "dummy", "-w", str(workspace))
    assert result.returncode == 1 and "--background" in result.stderr
