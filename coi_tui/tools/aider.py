"""Aider. Its chat history lives in the workspace (.aider.chat.history.md), so resume only needs
--restore-chat-history. Sandbox context goes in through its read-only file option (--read)."""

from __future__ import annotations

from collections.abc import Mapping

from coi_tui.tools.base import Tool


class AiderTool(Tool):
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
        argv = [self.binary]
        if permission_mode != "interactive":
            argv.append("--yes-always")
        if context_path:
            argv += ["--read", context_path]
        if resume:
            argv.append("--restore-chat-history")
        return argv


AIDER = AiderTool(
    name="aider",
    binary="aider",
    description="Aider (pair programming in your terminal)",
    config_dir=".aider",
)
