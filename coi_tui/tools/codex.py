"""OpenAI Codex CLI (COI 0.12, opt-in in the image). Its sessions are rollout logs under
~/.codex/sessions/, saved and restored with the config dir; resume is `codex resume <uuid>` (the
newest rollout), else `codex resume --last`. The sandbox context goes into ~/.codex/AGENTS.md,
never the workspace's."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from coi_tui.tools.base import Tool

ROLLOUT_ID_RE = re.compile(
    r"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)


class CodexTool(Tool):
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
        """COI's argv: the coi session id is never passed (codex names its own sessions)."""
        argv = [self.binary]
        if resume:
            argv += ["resume", resume_id] if resume_id else ["resume", "--last"]
        if permission_mode == "interactive":
            argv += ["-s", "workspace-write", "-a", "on-request"]
        else:
            argv.append("--dangerously-bypass-approvals-and-sandbox")
        options = options or {}
        if options.get("codex.model"):
            argv += ["-m", options["codex.model"]]
        if options.get("codex.reasoning_effort"):
            argv += ["-c", f"model_reasoning_effort={options['codex.reasoning_effort']}"]
        return argv

    def discover_resume_id(self, saved_config: Path) -> str | None:
        """The newest rollout by path (codex names them by date), as COI picks it."""
        logs = sorted(str(p) for p in (saved_config / "sessions").rglob("rollout-*.jsonl"))
        for path in reversed(logs):
            found = ROLLOUT_ID_RE.search(Path(path).stem)
            if found:
                return found.group(1)
        return None


CODEX = CodexTool(
    name="codex",
    binary="codex",
    description="OpenAI Codex CLI",
    config_dir=".codex",
    context_file=".codex/AGENTS.md",
    host_files=(".codex/config.toml", ".codex/AGENTS.md"),
)
