"""Where coi keeps its state on the host (~/.coi unless $COI_HOME says otherwise)."""

import os
from pathlib import Path


def coi_home() -> Path:
    override = os.environ.get("COI_HOME")
    return Path(override).expanduser() if override else Path.home() / ".coi"


def home_tag(home: Path | None = None) -> str:
    """A short id of a COI home: its monitor's nft table and the sessions it owns."""
    import hashlib

    return hashlib.sha256(str((home or coi_home()).resolve()).encode()).hexdigest()[:6]


def sessions_dir(tool_sessions_name: str) -> Path:
    """~/.coi/sessions-<tool>/: one folder per saved session."""
    return coi_home() / f"sessions-{tool_sessions_name}"


def locks_dir() -> Path:
    path = coi_home() / "locks"
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = coi_home() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path
