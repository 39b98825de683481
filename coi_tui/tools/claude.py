"""Claude Code (the default agent)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coi_tui.tools.base import SettingsPatch, Tool, newest_jsonl_stem

SETTINGS = ".claude/settings.json"
DEFAULT_EFFORT = "medium"

# What bypass mode adds to ~/.claude/settings.json (removed again in interactive mode).
BYPASS_SETTINGS: dict[str, Any] = {
    "permissions": {"defaultMode": "bypassPermissions"},
    "allowDangerouslySkipPermissions": True,
    "bypassPermissionsModeAccepted": True,
    "skipDangerousModePermissionPrompt": True,
}


def effort_settings(effort_level: str) -> dict[str, Any]:
    """Merged in every mode: the effort level (configured, else medium) and the flags that keep
    Claude from asking about it at start."""
    level = effort_level or DEFAULT_EFFORT
    return {
        "effortLevel": level,
        "effortLevelAccepted": True,
        "hasSeenEffortPrompt": True,
        "effortCalloutDismissed": True,
        "env": {"CLAUDE_CODE_EFFORT_LEVEL": level},
    }


class ClaudeTool(Tool):
    def command(
        self,
        session_id: str,
        *,
        resume: bool,
        resume_id: str | None,
        permission_mode: str,
        context_path: str | None = None,
        options: Mapping[str, str] | None = None,
    ) -> list[str]:
        """`claude --verbose [--permission-mode bypassPermissions] (--session-id ID |
        --resume [ID])`, as COI starts it."""
        argv = [self.binary, "--verbose"]
        if permission_mode != "interactive":
            argv += ["--permission-mode", "bypassPermissions"]
        if resume:
            argv += ["--resume", resume_id] if resume_id else ["--resume"]
        else:
            argv += ["--session-id", session_id]
        return argv

    def settings_patches(
        self, permission_mode: str, context_path: str | None, effort_level: str = ""
    ) -> list[SettingsPatch]:
        effort = effort_settings(effort_level)
        if permission_mode == "interactive":
            return [SettingsPatch(SETTINGS, set=effort, unset=BYPASS_SETTINGS)]
        return [SettingsPatch(SETTINGS, set={**BYPASS_SETTINGS, **effort})]

    def discover_resume_id(self, saved_config: Path) -> str | None:
        return newest_jsonl_stem(saved_config / "projects" / "-workspace")


CLAUDE = ClaudeTool(
    name="claude",
    binary="claude",
    description="Claude Code (Anthropic)",
    config_dir=".claude",
    context_file=".claude/CLAUDE.md",
    host_files=(SETTINGS, ".claude/CLAUDE.md", ".claude/config.yml"),
)
