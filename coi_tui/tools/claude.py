"""Claude Code (the default agent)."""

from __future__ import annotations

from pathlib import Path

from coi_tui.tools.base import SettingsPatch, Tool, newest_jsonl_stem

# What bypass mode adds to ~/.claude/settings.json (removed again in interactive mode).
BYPASS_SETTINGS = {
    "permissions": {"defaultMode": "bypassPermissions"},
    "allowDangerouslySkipPermissions": True,
    "bypassPermissionsModeAccepted": True,
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
    ) -> list[str]:
        argv = [self.binary]
        if permission_mode != "interactive":
            argv.append("--dangerously-skip-permissions")
        if resume:
            argv += ["--resume", resume_id] if resume_id else ["--resume"]
        else:
            argv += ["--session-id", session_id]
        return argv

    def settings_patches(
        self, permission_mode: str, context_path: str | None
    ) -> list[SettingsPatch]:
        path = ".claude/settings.json"
        if permission_mode == "interactive":
            return [SettingsPatch(path, unset=BYPASS_SETTINGS)]
        return [SettingsPatch(path, set=BYPASS_SETTINGS)]

    def discover_resume_id(self, saved_config: Path) -> str | None:
        return newest_jsonl_stem(saved_config / "projects" / "-workspace")


CLAUDE = ClaudeTool(
    name="claude",
    binary="claude",
    description="Claude Code (Anthropic)",
    config_dir=".claude",
    context_file=".claude/CLAUDE.md",
)
