"""Resume, persistence, `coi run` and COI_USE_DUMMY behave like COI (reference §2.4, §2.5,
§3.3), on the real daemon: a resumed persistent session restarts its own stopped container,
a running session is reused rather than duplicated, only sessions with saved data resume,
`coi run` is not a session, and COI_USE_DUMMY swaps argv[0] only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from coi_tui.incus import Incus
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner
from tests.integration.test_sessions import capture, wait_for

pytestmark = pytest.mark.incus


def session_id_of(stderr: str) -> str:
    return next(x for x in stderr.splitlines() if x.startswith("Session ID: ")).split(": ", 1)[1]


def launch(coi: CoiRunner, workspace: Path, *extra: str, **env: str) -> tuple[str, str, str]:
    """`coi shell --background --tool dummy ...`: (container, session id, stderr)."""
    result = coi.ok(
        "shell", "--background", "--tool", "dummy", "-w", str(workspace), *extra, env=env
    )
    name = next(x for x in result.stderr.splitlines() if x.startswith("Container: "))
    return name.split(": ", 1)[1], session_id_of(result.stderr), result.stderr


def sh(incus: Incus, name: str, script: str, user: int = 0) -> Any:
    return incus.exec_capture(name, ["sh", "-c", script], user=user)


def names(incus: Incus, coi: CoiRunner) -> list[str]:
    return sorted(i.name for i in incus.list_instances(coi.prefix))


def meta(coi: CoiRunner, tool: str, session_id: str) -> dict[str, Any]:
    path = coi.home / f"sessions-{tool}" / session_id / "metadata.json"
    return dict(json.loads(path.read_text()))


def wait_finalized(coi: CoiRunner, name: str, outcome: str) -> None:
    """The session's supervisor has saved and kept/removed the stopped container."""
    log = coi.home / "logs" / f"{name}.stdout.log"
    wait_for(
        lambda: log.is_file() and f"{name}: {outcome}" in log.read_text(),
        timeout=60,
        what=f"the supervisor to report '{outcome}'",
    )


def test_continue_restarts_a_stopped_persistent_session_in_place(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name, session_id, _ = launch(coi, workspace, "--persistent")
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent prompt")
    coi.ok("tmux", "send", name, "before the stop")
    wait_for(lambda: "You said: before the stop" in capture(coi, name), what="the echo")
    assert sh(incus, name, "touch /opt/made-in-session-1").ok
    incus.stop(name, force=True)
    wait_finalized(coi, name, "kept")
    assert incus.status(name) == "Stopped"

    # No --persistent this time: the session's own mode is inherited.
    again, resumed_id, err = launch(coi, workspace, "--continue")
    assert (again, resumed_id) == (name, session_id), err
    assert f"Setting up session {session_id}..." in err
    assert "Inherited persistent mode from session" in err
    assert f"Reusing persistent container {name}" in err
    assert "Persistent: yes" in err
    assert names(incus, coi) == [name]  # no second slot
    assert sh(incus, name, "test -e /opt/made-in-session-1").ok  # the same container
    wait_for(lambda: "Resuming session: " in capture(coi, name), what="the resume banner")
    assert f"Resuming session: {session_id}" in capture(coi, name)
    saved = meta(coi, "dummy", session_id)
    assert saved["persistent"] is True and saved["container_name"] == name


def test_explicit_persistence_wins_over_the_resumed_sessions_mode(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name, session_id, _ = launch(coi, workspace, "--persistent")
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent prompt")
    incus.stop(name, force=True)
    wait_finalized(coi, name, "kept")

    again, _, err = launch(coi, workspace, f"--resume={session_id}", COI_PERSISTENT="false")
    assert "overrides the session's saved mode" in err
    assert "Persistent: no" in err
    assert again == name  # its own slot, but a fresh ephemeral container with the saved state
    assert incus.get_instance(name).config.get("user.coi.persistent") == "false"
    wait_for(lambda: "Resuming session: " in capture(coi, name), what="the resume banner")
    assert meta(coi, "dummy", session_id)["persistent"] is False


def test_resume_of_a_running_session_reuses_its_container(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name, session_id, _ = launch(coi, workspace)
    wait_for(lambda: "dummy>" in capture(coi, name), what="the agent prompt")
    coi.ok("tmux", "send", name, "still here")
    wait_for(lambda: "You said: still here" in capture(coi, name), what="the echo")

    again, resumed_id, err = launch(coi, workspace, f"--resume={session_id}")
    assert (again, resumed_id) == (name, session_id), err
    assert "Container already running, reusing..." in err
    assert names(incus, coi) == [name]
    # The same agent in the same tmux session: nothing was restarted.
    assert "You said: still here" in capture(coi, name)
    agents = sh(incus, name, "pgrep -cf '^python3 /usr/local/bin/dummy'")
    assert agents.stdout.strip() == "1", agents.stdout
    # Another --slot does not make a second container of the same session either.
    again, _, err = launch(coi, workspace, f"--resume={session_id}", "--slot", "3")
    assert again == name and names(incus, coi) == [name], err

    # `coi run` would delete the container afterwards: it refuses instead.
    run = coi(
        "run", "--tool", "dummy", "-w", str(workspace), f"--resume={session_id}", "--", "true"
    )
    assert run.returncode == 1 and f"coi attach {name}" in run.stderr, run.stderr
    assert incus.status(name) == "Running"

    # Its tmux session gone (the user exited the shell): the agent starts there again.
    assert sh(incus, name, f"tmux kill-session -t coi-{name}", user=1000).ok
    again, _, err = launch(coi, workspace, f"--resume={session_id}")
    assert again == name and names(incus, coi) == [name], err
    wait_for(lambda: "dummy>" in capture(coi, name), what="the restarted agent")


def test_a_session_without_saved_data_is_not_resumable(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    name, session_id, _ = launch(coi, workspace, "--debug")  # bash: no agent state
    assert meta(coi, "dummy", session_id)["saved_at"] == ""  # written at start, no data yet
    assert sh(incus, name, "rm -rf /home/code/.claude").ok
    killed = coi.ok("kill", "--force", name)
    assert "No session data to save" in killed.stderr, killed.stderr
    assert not (coi.home / "sessions-dummy" / session_id / ".claude").exists()
    assert (coi.home / "sessions-dummy" / session_id / "metadata.json").is_file()

    auto = coi("shell", "--background", "--tool", "dummy", "-w", str(workspace), "--continue")
    assert auto.returncode == 1 and "no previous session to resume" in auto.stderr
    by_id = coi(
        "shell", "--background", "--tool", "dummy", "-w", str(workspace), f"--resume={session_id}"
    )
    assert by_id.returncode == 1, by_id.stderr
    assert f"session '{session_id}' not found" in by_id.stderr
    assert names(incus, coi) == []
    listed = json.loads(coi.ok("list", "--all", "--json").stdout)
    assert "saved_sessions" not in listed


def test_coi_run_is_not_a_session(coi: CoiRunner, workspace: Path, incus: Incus) -> None:
    for _ in range(2):
        assert coi("run", "-w", str(workspace), "--", "true").returncode == 0
    persistent = coi("run", "--persistent", "-w", str(workspace), "--", "true")
    assert persistent.returncode == 0, persistent.stderr
    name = container_name(coi.prefix, str(workspace), 1)
    assert incus.status(name) == "Stopped"
    # Killing the kept container saves nothing either: a run has no session to save.
    killed = coi("kill", "--force", name)
    assert killed.returncode == 0, killed.stderr
    assert "Saving session data" not in killed.stderr
    left = [p for p in coi.home.glob("sessions-*/*")]
    assert left == []
    listed = json.loads(coi.ok("list", "--all", "--json").stdout)
    assert "saved_sessions" not in listed


def test_use_dummy_keeps_the_tool_and_swaps_only_argv0(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    result = coi.ok(
        "shell",
        "--background",
        "--tool",
        "claude",
        "-w",
        str(workspace),
        env={"COI_USE_DUMMY": "1"},
    )
    assert "Using dummy (test stub) for faster testing" in result.stderr
    name = next(x for x in result.stderr.splitlines() if x.startswith("Container: ")).split()[1]
    session_id = session_id_of(result.stderr)
    wait_for(lambda: "dummy>" in capture(coi, name), what="the stub's prompt")
    command = sh(incus, name, "pgrep -af '^python3 /usr/local/bin/dummy'").stdout
    expected = f"dummy --verbose --permission-mode bypassPermissions --session-id {session_id}"
    assert expected in command, command
    # The claude stand-in never ran: argv[0] was swapped, not the tool.
    assert not sh(incus, name, "test -e /home/code/.cache/coi-fake-agents/claude.jsonl").ok
    saved = meta(coi, "claude", session_id)
    assert saved["tool"] == "claude" and saved["container_name"] == name
    assert incus.get_instance(name).config["user.coi.tool"] == "claude"
    # claude's own settings merge still happened (the tool stayed claude).
    settings = json.loads(sh(incus, name, "cat /home/code/.claude/settings.json").stdout)
    assert settings["effortLevel"] == "medium"


def test_use_dummy_without_tool_flag_keeps_the_configured_tool(
    coi: CoiRunner, workspace: Path
) -> None:
    result = coi.ok("shell", "--background", "-w", str(workspace), env={"COI_USE_DUMMY": "1"})
    assert "Using dummy (test stub) for faster testing" in result.stderr
    assert "Tool: claude" in result.stderr
    assert (coi.home / "sessions-claude" / session_id_of(result.stderr) / "metadata.json").is_file()
    assert not (coi.home / "sessions-dummy").exists()


def test_custom_context_file_replaces_the_template_and_context_json_can_be_off(
    coi: CoiRunner, workspace: Path, incus: Incus, tmp_path: Path
) -> None:
    custom = tmp_path / "my context.md"
    custom.write_text("# Team rules\n\nAlways run the linters.\n")
    (coi.home / "config.toml").write_text(
        f'[tool]\ncontext_file = "{custom}"\ncontext_json = false\n'
    )
    name, _, _ = launch(coi, workspace, "--debug")
    context = sh(incus, name, "cat /home/code/SANDBOX_CONTEXT.md").stdout
    assert context == custom.read_text()
    claude_md = sh(incus, name, "cat /home/code/.claude/CLAUDE.md").stdout
    assert "Always run the linters." in claude_md and "# COI Sandbox Environment" not in claude_md
    assert not sh(incus, name, "test -e /home/code/SANDBOX_CONTEXT.json").ok


def test_configured_effort_level_reaches_settings_and_environment(
    coi: CoiRunner, workspace: Path, incus: Incus
) -> None:
    (coi.home / "config.toml").write_text('[tool.claude]\neffort_level = "high"\n')
    name, _, _ = launch(coi, workspace)
    settings = json.loads(sh(incus, name, "cat /home/code/.claude/settings.json").stdout)
    assert settings["effortLevel"] == "high"
    assert settings["env"]["CLAUDE_CODE_EFFORT_LEVEL"] == "high"
    shown = sh(
        incus, name, f"tmux show-environment -t coi-{name} CLAUDE_CODE_EFFORT_LEVEL", user=1000
    )
    assert shown.stdout.strip() == "CLAUDE_CODE_EFFORT_LEVEL=high", shown.stdout + shown.stderr
