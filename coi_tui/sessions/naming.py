"""Container names: <prefix><sha256(abs workspace)[:8]>-<slot>, exactly as COI names them."""

from __future__ import annotations

import hashlib
import os
import re

MAX_SLOTS = 10


def workspace_identity(workspace: str) -> str:
    """The absolute path, without resolving symlinks (as Go's filepath.Abs)."""
    return os.path.abspath(workspace)


def workspace_hash(workspace: str) -> str:
    return hashlib.sha256(workspace_identity(workspace).encode()).hexdigest()[:8]


def container_name(prefix: str, workspace: str, slot: int) -> str:
    return f"{prefix}{workspace_hash(workspace)}-{slot}"


def name_pattern(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}([a-f0-9]{{8}})-(\d+)$")


def parse_container_name(prefix: str, name: str) -> tuple[str, int] | None:
    """(hash, slot) for a coi container name, None for anything else."""
    match = name_pattern(prefix).match(name)
    return (match.group(1), int(match.group(2))) if match else None


def tmux_session(container: str) -> str:
    return f"coi-{container}"
