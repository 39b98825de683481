"""Operator commands on real sessions: top, overview, logs, sessions, tool spec."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coi_tui.incus import Incus
from tests.conftest import CoiRunner
from tests.integration.test_sessions import start_background, wait_for

pytestmark = pytest.mark.incus


def test_top_sees_a_busy_container_and_its_processes(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    assert coi.ok("top", "-i", "0.2").stdout.strip() == "No running containers."
    assert json.loads(coi.ok("top", "--json", "-i", "0.2").stdout) == []

    idle = start_background(coi, workspace)
    busy = start_background(coi, workspace)
    # A CPU burner and a recognisable sleeper, as the code user.
    for argv in (["sh", "-c", "while :; do :; done"], ["sleep", "4242"]):
        coi.ok(
            "container",
            "exec",
            busy,
            "--user",
            "1000",
            "--",
            "sh",
            "-c",
            f"nohup {' '.join(repr(a) for a in argv)} >/dev/null 2>&1 &",
        )

    def busy_row() -> dict[str, object] | None:
        rows = json.loads(coi.ok("top", "--json", "-i", "0.5").stdout)
        return next((r for r in rows if r["name"] == busy and r["cpu_percent"] > 40), None)

    wait_for(lambda: busy_row() is not None, 30, "the burner's CPU to show")
    rows = json.loads(coi.ok("top", "--json", "-i", "0.5").stdout)
    assert {r["name"] for r in rows} == {idle, busy}
    assert rows[0]["name"] == busy  # sorted by CPU
    assert set(rows[0]) == {
        "name",
        "alias",
        "workspace",
        "cpu_percent",
        "memory_mb",
        "memory_limit_mb",
        "disk_read_mb_per_sec",
        "disk_write_mb_per_sec",
        "net_rx_mb_per_sec",
        "net_tx_mb_per_sec",
    }
    assert rows[0]["workspace"] == str(workspace) and rows[0]["memory_mb"] > 0

    procs = json.loads(coi.ok("top", busy, "--procs", "--json", "-i", "0.3").stdout)
    sleeper = next(p for p in procs if p["command"] == "sleep 4242")
    assert sleeper["container"] == busy and sleeper["user"] == "code"
    # Host PIDs: the process is visible from the host under that pid.
    assert "sleep" in Path(f"/proc/{sleeper['pid']}/cmdline").read_text()
    text = coi.ok("top", "-i", "0.2").stdout.splitlines()
    assert text[0].split()[:4] == ["CONTAINER", "ALIAS", "CPU%", "MEM"]

    assert coi("top", "-i", "0").returncode == 2
    assert coi("top", "--procs", "--sort", "net").returncode == 2
    missing = coi("top", "no-such-container")
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_overview_logs_sessions_and_tool_spec(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name = start_background(coi, workspace)
    shot = coi.ok("overview").stdout.splitlines()  # not a terminal: one snapshot
    assert shot[0].startswith("coi overview  v") and "sessions=1  running=1" in shot[0]
    assert shot[1] == "-" * 72
    assert shot[2].split() == ["SESSION", "CONTAINER", "WORKSPACE", "MODE", "STARTED", "UPTIME"]
    row = next(line for line in shot if name in line)
    assert "ephemeral" in row and not row.rstrip().endswith("-")
    assert coi("overview", "--refresh-interval", "0").returncode == 2

    # The session's supervisor logs where `coi logs` looks, found from the workspace.
    wait_for(
        lambda: "[supervisor] watching" in coi("logs", "-w", str(workspace)).stdout,
        20,
        "the supervisor's log",
    )
    assert f"watching {name}" in coi.ok("logs", name).stdout
    none = coi("logs", "coi-nothing-here-1")
    assert none.returncode == 1 and "no logs" in none.stderr

    spec = json.loads(coi.ok("tool", "spec", "--container", name, "--session-id", "s-1").stdout)
    assert spec["command"][0] == "dummy" and "s-1" in spec["command"]
    assert spec["env"]["COI_SESSION_ID"] == "s-1" and spec["env"]["COI_CONTAINER"] == name
    assert coi("tool", "spec", "--container", name, "--session-id", "../x").returncode == 2
    headless = coi("tool", "spec", "--container", name, "--session-id", "s", "--prompt-file", "p")
    assert headless.returncode == 1 and "claude only" in headless.stderr

    # Ending the session saves it; `coi sessions` lists it.
    assert json.loads(coi.ok("sessions", "--json").stdout) == []
    coi.ok("shutdown", "--force", name)
    saved = json.loads(coi.ok("sessions", "--json").stdout)
    assert [s["Workspace"] for s in saved] == [str(workspace)]
    assert saved[0]["ID"] in coi.ok("sessions").stdout


def test_headless_prompt_runs(coi: CoiRunner, workspace: Path, tmp_path: Path) -> None:
    """`coi run --prompt*` runs the agent (the image's claude stand-in) on the prompt and exits
    with its status; the prompt arrives whole, quotes and newlines included."""
    said = coi.ok("run", "-w", str(workspace), "--tool", "claude", "--prompt", 'it\'s "quoted"')
    assert 'You said: it\'s "quoted"' in said.stdout
    prompt = tmp_path / "prompt with space.txt"
    prompt.write_text("from a file\n")
    filed = coi.ok("run", "-w", str(workspace), "--tool", "claude", "--prompt-file", str(prompt))
    assert "You said: from a file" in filed.stdout

    # COI's checks and words (run/run_prompt_validation.py), all exit 2
    combined = coi("run", "-w", str(workspace), "--prompt", "x", "--", "true")
    assert combined.returncode == 2
    assert "positional command cannot be combined" in combined.stderr
    both = coi("run", "-w", str(workspace), "--prompt", "x", "--prompt-file", str(prompt))
    assert both.returncode == 2 and "mutually exclusive" in both.stderr
    blank = coi("run", "-w", str(workspace), "--tool", "claude", "--prompt", "   ")
    assert blank.returncode == 2 and "empty" in blank.stderr
    unknown = coi("run", "-w", str(workspace), "--tool", "claude", "--prompt-name", "nope")
    assert unknown.returncode == 2 and 'no prompt named "nope"' in unknown.stderr
    other = coi("run", "-w", str(workspace), "--tool", "dummy", "--prompt", "x")
    assert other.returncode == 1 and "claude only" in other.stderr
    asking = coi(
        "run",
        "-w",
        str(workspace),
        "--tool",
        "claude",
        "--prompt",
        "x",
        env={"COI_PERMISSION_MODE": "interactive"},
    )
    assert asking.returncode == 1 and 'permission_mode = "bypass"' in asking.stderr
    missing = coi("run", "-w", str(workspace), "--tool", "claude", "--prompt-file", "/nope")
    assert missing.returncode == 2 and "failed to read --prompt-file" in missing.stderr
