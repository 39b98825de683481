"""pi (pi-coding-agent) and its fork omp (Oh My Pi), as COI 0.9/0.12 run them: no permission
system (permission_mode changes nothing), `--continue` on resume, their sessions redirected
into the workspace by an environment variable, and the sandbox context in APPEND_SYSTEM.md,
which they append to their system prompt."""

from __future__ import annotations

from collections.abc import Mapping

from coi_tui.tools.base import Tool


class PiTool(Tool):
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
        return [self.binary, "--continue"] if resume else [self.binary]


PI = PiTool(
    name="pi",
    binary="pi",
    description="pi (minimal terminal coding agent)",
    config_dir=".pi/agent",
    env={"PI_CODING_AGENT_SESSION_DIR": "/workspace/.pi-sessions"},
    context_file=".pi/agent/APPEND_SYSTEM.md",
    host_files=(".pi/agent/settings.json", ".pi/agent/models.json", ".pi/agent/AGENTS.md"),
)
OMP = PiTool(
    name="omp",
    binary="omp",
    description="omp (Oh My Pi, a pi fork)",
    config_dir=".omp",
    env={"OMP_SESSION_DIR": "/workspace/.omp-sessions"},
    context_file=".omp/APPEND_SYSTEM.md",
    host_files=(".omp/settings.json", ".omp/models.json", ".omp/AGENTS.md"),
)
