"""Agents: argv per permission mode, settings-file merges, the managed context block."""

from __future__ import annotations

import pytest

from coi_tui.config.settings import Mount, Settings
from coi_tui.sessions.host_hook import limit_config, mount_devices, root_limits
from coi_tui.tools import TOOLS, get_tool
from coi_tui.tools.base import SANDBOX_CONTEXT
from coi_tui.tools.context import BEGIN, END, apply_patch, with_managed_block


@pytest.mark.parametrize(
    ("tool", "mode", "argv"),
    [
        (
            "claude",
            "bypass",
            ["claude", "--verbose", "--permission-mode", "bypassPermissions", "--session-id", "S"],
        ),
        ("claude", "interactive", ["claude", "--verbose", "--session-id", "S"]),
        (
            "dummy",
            "bypass",
            ["dummy", "--verbose", "--permission-mode", "bypassPermissions", "--session-id", "S"],
        ),
        ("opencode", "bypass", ["opencode"]),
        ("opencode", "interactive", ["opencode"]),
        ("aider", "bypass", ["aider", "--yes-always", "--read", SANDBOX_CONTEXT]),
        ("aider", "interactive", ["aider", "--read", SANDBOX_CONTEXT]),
    ],
)
def test_argv_per_permission_mode(tool: str, mode: str, argv: list[str]) -> None:
    command = get_tool(tool).command(
        "S", resume=False, resume_id=None, permission_mode=mode, context_path=SANDBOX_CONTEXT
    )
    assert command == argv


def test_every_registered_tool_is_accepted_by_the_config() -> None:
    from coi_tui.config.schema import BY_PATH, CHECKS

    for name in TOOLS:
        assert CHECKS["tool"](BY_PATH["tool.name"], name) == name


def test_claude_settings_merge_keeps_user_keys_and_interactive_undoes_bypass() -> None:
    tool = get_tool("claude")
    user = {"env": {"CLAUDE_CODE_USE_BEDROCK": "1"}, "permissions": {"allow": ["Bash(ls)"]}}
    (bypass,) = tool.settings_patches("bypass", SANDBOX_CONTEXT)
    merged = apply_patch(user, bypass)
    assert merged["env"] == {"CLAUDE_CODE_USE_BEDROCK": "1", "CLAUDE_CODE_EFFORT_LEVEL": "medium"}
    assert merged["permissions"] == {"allow": ["Bash(ls)"], "defaultMode": "bypassPermissions"}
    assert merged["allowDangerouslySkipPermissions"] is True
    assert apply_patch(merged, bypass) == merged  # idempotent
    (interactive,) = tool.settings_patches("interactive", SANDBOX_CONTEXT)
    effort = {
        "effortLevel": "medium",
        "effortLevelAccepted": True,
        "hasSeenEffortPrompt": True,
        "effortCalloutDismissed": True,
    }
    # Interactive takes back only the bypass keys; the effort keys are merged in every mode.
    assert apply_patch(merged, interactive) == {**user, **effort, "env": merged["env"]}
    # A user's own choice of mode is not ours to remove.
    own = {"permissions": {"defaultMode": "acceptEdits"}}
    assert apply_patch(own, interactive)["permissions"] == own["permissions"]


def test_claude_effort_level_from_config_replaces_the_default() -> None:
    (patch,) = get_tool("claude").settings_patches("bypass", None, effort_level="high")
    merged = apply_patch({"effortLevel": "medium", "env": {"A": "1"}}, patch)
    assert merged["effortLevel"] == "high"
    assert merged["env"] == {"A": "1", "CLAUDE_CODE_EFFORT_LEVEL": "high"}


def test_opencode_config_gets_permission_and_instructions_once() -> None:
    tool = get_tool("opencode")
    user = {"model": "anthropic/x", "instructions": ["docs/RULES.md"]}
    (patch,) = tool.settings_patches("bypass", SANDBOX_CONTEXT)
    once = apply_patch(user, patch)
    twice = apply_patch(once, patch)
    assert twice == once
    assert twice["instructions"] == ["docs/RULES.md", SANDBOX_CONTEXT]
    assert twice["permission"] == {"*": "allow"} and twice["model"] == "anthropic/x"
    (off,) = tool.settings_patches("interactive", None)
    assert apply_patch(twice, off) == user


def test_managed_block_is_replaced_not_repeated_and_keeps_crlf() -> None:
    text = "# My notes\nbe nice\n"
    first = with_managed_block(text, "context v1")
    second = with_managed_block(first, "context v2")
    assert second.count(BEGIN) == 1 and second.count(END) == 1
    assert second.startswith("# My notes\nbe nice\n") and "context v2" in second
    assert "context v1" not in second
    crlf = with_managed_block("a\r\nb\r\n", "ctx")
    again = with_managed_block(crlf, "ctx2")
    assert again.count(BEGIN) == 1 and "\r\n" in again and "\n" not in again.replace("\r\n", "")
    assert with_managed_block("", "x") == f"{BEGIN}\nx\n{END}\n"


def test_limits_map_to_incus_keys() -> None:
    settings = Settings(
        limit_cpu_count="2",
        limit_cpu_allowance="50%",
        limit_memory="512MiB",
        limit_memory_enforce="hard",
        max_processes=100,
        max_duration="1m30s",
        limit_disk_read="10MiB",
        limit_disk_size="5GiB",
    )
    config = limit_config(settings)
    assert config["limits.cpu"] == "2" and config["limits.cpu.allowance"] == "50%"
    assert config["limits.memory"] == "512MiB" and config["limits.memory.enforce"] == "hard"
    assert config["limits.processes"] == "100" and config["user.coi.max_duration"] == "90"
    assert root_limits(settings) == {"limits.read": "10MiB", "size": "5GiB"}
    assert limit_config(Settings()) == {}


def test_mount_devices_follow_the_workspace_shift() -> None:
    settings = Settings(mounts=[Mount("/data", "/data", readonly=True), Mount("/x", "/y")])
    devices = mount_devices(settings, {"shift": "true"})
    assert devices["coi-mount-1"] == {
        "type": "disk",
        "source": "/data",
        "path": "/data",
        "readonly": "true",
        "shift": "true",
    }
    assert "shift" not in mount_devices(settings, {})["coi-mount-2"]
