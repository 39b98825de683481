"""Dashboard preferences: `[tui.keymap]` from the config files (binding id -> keys) and the
remembered theme (~/.coi/tui-state.json)."""

from __future__ import annotations

import contextlib
import json
import tomllib
from pathlib import Path
from typing import Any

from coi_tui.config.settings import trusted_config_files
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home


def _tui_table(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    table = data.get("tui")
    return table if isinstance(table, dict) else {}


def load_keymap(cwd: Path | None = None) -> dict[str, str]:
    """{binding id: "key[,key...]"} from the user's config files' [tui.keymap], never the
    project's (a repository must not choose which key confirms a kill)."""
    keymap: dict[str, str] = {}
    for path in trusted_config_files(cwd):
        table = _tui_table(path).get("keymap")
        if isinstance(table, dict):
            keymap.update({str(k): str(v) for k, v in table.items() if isinstance(v, str)})
    return keymap


def state_path() -> Path:
    return coi_home() / "tui-state.json"


def load_state() -> dict[str, Any]:
    try:
        data = json.loads(state_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_state(**changes: Any) -> None:
    """Merge changes into the state file (atomically: a crash never leaves half a file)."""
    state = load_state()
    state.update(changes)
    path = state_path()
    with contextlib.suppress(OSError):  # not remembering a theme is not worth an error
        atomic_write(path, json.dumps(state, indent=2), 0o644)
