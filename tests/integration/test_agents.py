"""Each agent starts in tmux with its own flags for both permission modes, its settings files
are merged (never overwritten), and its native context holds the sandbox context exactly once
after two sessions. The image carries fakes of claude/opencode/aider with the real argv
contract; they record each invocation in ~/.cache/coi-fake-agents/<name>.jsonl. codex, pi and
omp: their argv, environment, context file and the host config they are seeded with."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coi_tui.tools.context import BEGIN
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus
CONTEXT = "/home/code/SANDBOX_CONTEXT.md"


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def read(incus: Any, name: str, path: str) -> str:
    result = incus.exec_capture(name, ["cat", path], user=1000)
    return result.stdout if result.ok else ""


def start(coi: CoiRunner, workspace: Path, tool: str, **env: str) -> str:
    # An empty host home: what a developer's own ~/.claude holds must not reach these checks.
    host_home = coi.home.parent / "host-home"
    host_home.mkdir(exist_ok=True)
    env = {"HOME": str(host_home), **env}
    result = coi.ok(
        "shell", "--background", "--persistent", "--tool", tool, "-w", str(workspace), env=env
    )
    return next(x for x in result.stderr.splitlines() if x.startswith("Container: ")).split()[1]


def invocations(incus: Any, name: str, tool: str) -> list[list[str]]:
    text = read(incus, name, f"/home/code/.cache/coi-fake-agents/{tool}.jsonl")
    return [json.loads(line)["argv"] for line in text.splitlines()]


def pane(coi: CoiRunner, name: str) -> str:
    result = coi("tmux", "capture", name)
    return result.stdout if result.returncode == 0 else ""


EXPECTED = {
    # tool: (bypass flags present in session 1, absent in session 2)
    "claude": ["--permission-mode", "bypassPermissions"],
    "opencode": [],
    "aider": ["--yes-always"],
}
EFFORT = {
    "effortLevel": "medium",
    "effortLevelAccepted": True,
    "hasSeenEffortPrompt": True,
    "effortCalloutDismissed": True,
}


@pytest.mark.parametrize("tool", ["claude", "opencode", "aider"])
def test_agent_flags_settings_and_context_over_two_sessions(
    coi: CoiRunner, workspace: Path, incus: Any, tool: str
) -> None:
    # Session 1: bypass (the default).
    name = start(coi, workspace, tool)
    wait_for(lambda: len(invocations(incus, name, tool)) == 1, 20, f"{tool} to start")
    (first,) = invocations(incus, name, tool)
    for flag in EXPECTED[tool]:
        assert flag in first
    if tool == "claude":
        # COI: claude --verbose --permission-mode bypassPermissions --session-id <uuid>
        assert first[:3] == ["--verbose", "--permission-mode", "bypassPermissions"]
        assert first[3] == "--session-id" and len(first) == 5
        wait_for(lambda: "Permission mode: bypassPermissions" in pane(coi, name), 10, "banner")
        settings = json.loads(read(incus, name, "/home/code/.claude/settings.json"))
        assert settings["permissions"]["defaultMode"] == "bypassPermissions"
        assert {key: settings[key] for key in EFFORT} == EFFORT
        assert settings["env"] == {"CLAUDE_CODE_EFFORT_LEVEL": "medium"}
        # The user's own settings (e.g. from a restored session) must survive the next merge.
        settings["env"] = {"CLAUDE_CODE_USE_BEDROCK": "1"}
        incus.push_file(
            name,
            "/home/code/.claude/settings.json",
            json.dumps(settings).encode(),
            uid=1000,
            gid=1000,
        )
    if tool == "opencode":
        config = json.loads(read(incus, name, "/home/code/.config/opencode/opencode.json"))
        assert config["permission"] == {"*": "allow"}
        wait_for(lambda: 'permission: {"*": "allow"}' in pane(coi, name), 10, "opencode banner")
    if tool == "aider":
        wait_for(lambda: f"read-only context: {CONTEXT}" in pane(coi, name), 10, "aider banner")

    # Stop it (kept: persistent) and wait until the supervisor has finished with it.
    incus.stop(name, force=True)
    log = coi.home / "logs" / f"{name}.stdout.log"
    wait_for(lambda: log.is_file() and f"{name}: kept" in log.read_text(), 30, "finalize")

    # Session 2 in the same container: interactive.
    assert start(coi, workspace, tool, COI_PERMISSION_MODE="interactive") == name
    wait_for(lambda: len(invocations(incus, name, tool)) == 2, 20, f"{tool} to restart")
    second = invocations(incus, name, tool)[1]
    for flag in EXPECTED[tool]:
        assert flag not in second
    context = read(incus, name, CONTEXT)
    assert context.count("# COI Sandbox Environment") == 1 and name in context
    rows = {
        line.split("|")[1].strip(): line.split("|")[2].strip()
        for line in context.splitlines()
        if line.startswith("| ") and line.count("|") == 3
    }
    assert rows["Container mode"] == "Persistent (survives between sessions)"
    assert rows["GitHub CLI"] == "Not authenticated"
    assert rows["Docker"].startswith("Available")
    assert rows["Tool"] == tool and rows["Container"] == name
    assert rows["User"] == "Non-root user (code)"
    facts = json.loads(read(incus, name, "/home/code/SANDBOX_CONTEXT.json"))
    assert facts["schema_version"] == 1
    assert (facts["container_name"], facts["tool_name"]) == (name, tool)
    assert (facts["workspace_path"], facts["home_dir"]) == ("/workspace", "/home/code")
    assert facts["persistent"] is True and facts["network"]["mode"] == "restricted"
    assert facts["gh_cli_authenticated"] is False and facts["published_ports"] == []
    if tool == "claude":
        wait_for(lambda: "Permission mode: default" in pane(coi, name), 10, "banner")
        claude_md = read(incus, name, "/home/code/.claude/CLAUDE.md")
        assert claude_md.count(BEGIN) == 1 and claude_md.count("# COI Sandbox Environment") == 1
        assert second[:2] == ["--verbose", "--session-id"] and len(second) == 3
        settings = json.loads(read(incus, name, "/home/code/.claude/settings.json"))
        # merged, not overwritten: the user's env stays next to the effort level
        assert settings["env"] == {
            "CLAUDE_CODE_USE_BEDROCK": "1",
            "CLAUDE_CODE_EFFORT_LEVEL": "medium",
        }
        assert {key: settings[key] for key in EFFORT} == EFFORT  # in every mode
        assert "defaultMode" not in settings.get("permissions", {})
        assert "allowDangerouslySkipPermissions" not in settings
    if tool == "opencode":
        config = json.loads(read(incus, name, "/home/code/.config/opencode/opencode.json"))
        assert config["instructions"] == [CONTEXT]
        assert "permission" not in config
    if tool == "aider":
        assert second.count("--read") == 1 and second[second.index("--read") + 1] == CONTEXT


def test_codex_pi_and_omp_start_with_their_argv_context_and_host_config(
    coi: CoiRunner, workspace: Path, incus: Any, tmp_path: Path
) -> None:
    """COI's codex seeding case: the host's ~/.codex/config.toml arrives byte for byte, its
    AGENTS.md keeps the user's text once with the sandbox context once, auth.json stays out
    (a login file: only [[credentials]] bundle = "codex" brings it); pi and omp get their
    session directories in the workspace and the context in APPEND_SYSTEM.md."""
    host_home = coi.home.parent / "host-home"
    (host_home / ".codex").mkdir(parents=True)
    config = b'model = "gpt-5.1-codex"\n[features]\nweb_search = true\n'
    (host_home / ".codex" / "config.toml").write_bytes(config)
    (host_home / ".codex" / "AGENTS.md").write_text("Use tabs, never spaces.\n")
    (host_home / ".codex" / "auth.json").write_text('{"OPENAI_API_KEY": "sk-codex-secret"}')
    (coi.home / "config.toml").write_text('[tool.codex]\nreasoning_effort = "high"\n')
    name = start(coi, workspace, "codex")
    wait_for(lambda: len(invocations(incus, name, "codex")) == 1, 20, "codex to start")
    assert invocations(incus, name, "codex") == [
        ["--dangerously-bypass-approvals-and-sandbox", "-c", "model_reasoning_effort=high"]
    ]
    assert read(incus, name, "/home/code/.codex/config.toml").encode() == config
    agents_md = read(incus, name, "/home/code/.codex/AGENTS.md")
    assert agents_md.count("Use tabs, never spaces.") == 1
    assert agents_md.count("# COI Sandbox Environment") == 1
    assert read(incus, name, "/home/code/.codex/auth.json") == ""
    coi.ok("kill", name)

    for tool, variable, context in (
        ("pi", "PI_CODING_AGENT_SESSION_DIR=/workspace/.pi-sessions", ".pi/agent/APPEND_SYSTEM.md"),
        ("omp", "OMP_SESSION_DIR=/workspace/.omp-sessions", ".omp/APPEND_SYSTEM.md"),
    ):
        name = start(coi, workspace, tool)
        key, _, value = variable.partition("=")
        shown = (f"{tool} (coi fake agent) argv: []", f"{key}: {value}")
        wait_for(lambda n=name, s=shown: all(x in pane(coi, n) for x in s), 20, f"{tool} banner")
        assert "# COI Sandbox Environment" in read(incus, name, f"/home/code/{context}")
        coi.ok("kill", name)
