"""The common interface every agent implements. One small module per agent."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CODE_HOME = "/home/code"


@dataclass(frozen=True)
class Tool:
    """How to start one agent CLI, and where it keeps the state that `--resume` needs."""

    name: str
    binary: str
    description: str
    config_dir: str = ""  # under the code user's home; saved and restored for --resume
    sessions_name: str = ""  # ~/.coi/sessions-<sessions_name>/
    env: dict[str, str] = field(default_factory=dict)

    @property
    def sessions_dir_name(self) -> str:
        return self.sessions_name or self.name

    def command(
        self, session_id: str, *, resume: bool, resume_id: str | None, permission_mode: str
    ) -> list[str]:
        """argv that starts the agent in /workspace."""
        return [self.binary]

    def discover_resume_id(self, saved_config: Path) -> str | None:
        """The agent's own session id found in a saved config dir, when it has one."""
        return None


def newest_jsonl_stem(directory: Path) -> str | None:
    if not directory.is_dir():
        return None
    logs = sorted(directory.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True)
    return logs[0].stem if logs else None
