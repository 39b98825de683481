"""The common interface every agent implements. One small module per agent; adding an agent is
that module plus a line in TOOLS (tools/__init__.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CODE_HOME = "/home/code"
WORKSPACE = "/workspace"  # where the workspace is mounted, unless preserve_workspace_path
SANDBOX_CONTEXT = f"{CODE_HOME}/SANDBOX_CONTEXT.md"  # written every session


@dataclass(frozen=True)
class SettingsPatch:
    """A change to one of the agent's JSON settings files (home-relative path). `set` is
    deep-merged into whatever the file already holds (the user's own keys survive); `unset`
    removes what coi set before, but only where the value is still exactly coi's."""

    path: str
    set: dict[str, Any] = field(default_factory=dict)
    unset: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Tool:
    """How to start one agent CLI, and where it keeps the state that `--resume` needs."""

    name: str
    binary: str
    description: str
    config_dir: str = ""  # under the code user's home; saved and restored for --resume
    sessions_name: str = ""  # ~/.coi/sessions-<sessions_name>/
    env: dict[str, str] = field(default_factory=dict)
    # Home-relative markdown file the agent reads as instructions; coi keeps the sandbox
    # context there in a managed block. "" when the tool takes context another way.
    context_file: str = ""
    # Home-relative config files copied from the host user's home into a new container when
    # they exist there (never login files: those are credential bundles, tools/credentials.py).
    host_files: tuple[str, ...] = ()

    @property
    def sessions_dir_name(self) -> str:
        return self.sessions_name or self.name

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
        """argv that starts the agent in /workspace. `context_path` is the in-container
        sandbox context file when auto_context is on (for tools that take it as a flag);
        `options` are the tool's own config keys (tool_options)."""
        return [self.binary]

    def settings_patches(
        self, permission_mode: str, context_path: str | None, effort_level: str = ""
    ) -> list[SettingsPatch]:
        """JSON settings to merge for this permission mode (and context, when on).
        `effort_level` is [tool.claude] effort_level ("" when unset); tools without an effort
        setting ignore it."""
        return []

    def discover_resume_id(self, saved_config: Path) -> str | None:
        """The agent's own session id found in a saved config dir, when it has one."""
        return None


def newest_jsonl_stem(directory: Path) -> str | None:
    if not directory.is_dir():
        return None
    logs = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    return logs[0].stem if logs else None


def tool_options(settings: Any) -> dict[str, str]:
    """The per-tool config keys a tool's argv takes ([tool.codex] model, reasoning_effort),
    non-empty ones only; read by every caller of Tool.command."""
    found = {
        "codex.model": settings.codex_model,
        "codex.reasoning_effort": settings.codex_reasoning_effort,
    }
    return {key: str(value) for key, value in found.items() if value}
