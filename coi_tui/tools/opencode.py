"""opencode (sst/opencode). Keeps its session database in ~/.local/share/opencode."""

from __future__ import annotations

from coi_tui.tools.base import Tool


class OpencodeTool(Tool):
    def command(
        self, session_id: str, *, resume: bool, resume_id: str | None, permission_mode: str
    ) -> list[str]:
        argv = [self.binary]
        if resume:
            argv += ["--session", resume_id] if resume_id else ["--continue"]
        return argv


OPENCODE = OpencodeTool(
    name="opencode",
    binary="opencode",
    description="opencode (terminal AI coding agent)",
    config_dir=".local/share/opencode",
)
