"""Saved sessions on the host: ~/.coi/sessions-<tool>/<session-id>/{metadata.json,<config dir>}.

metadata.json is written atomically (temp file + rename). A saved config directory replaces the
old copy only once the new pull is complete, so a crash mid-save never loses the last good state.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from coi_tui.core.errors import CoiError
from coi_tui.core.fs import atomic_write
from coi_tui.core.paths import coi_home, sessions_dir
from coi_tui.incus.client import PullLimits
from coi_tui.sessions.naming import parse_container_name, workspace_hash
from coi_tui.tools import TOOLS, Tool
from coi_tui.tools.credentials import BUNDLES

# What a session save copies out of the container's tool config directory (~/.claude...):
# the agent fills it, so every dimension is bounded. Real transcripts stay far below these.
SAVE_LIMITS = PullLimits(
    max_file=256 << 20,
    max_total=1 << 30,
    max_entries=50_000,
    max_depth=48,
    max_seconds=120.0,
    request_timeout=20.0,
)


@dataclass
class SessionMeta:
    session_id: str
    container_name: str
    persistent: bool
    workspace: str
    saved_at: str = ""
    tool: str = ""
    slot: int = 0
    created_at: str = ""
    profile: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionMeta:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class SessionStore:
    def __init__(self, tool: Tool) -> None:
        self.tool = tool
        self.root = sessions_dir(tool.sessions_dir_name)

    def path(self, session_id: str) -> Path:
        return self.root / session_id

    def write_meta(self, meta: SessionMeta) -> None:
        atomic_write(
            self.path(meta.session_id) / "metadata.json", json.dumps(asdict(meta), indent=2) + "\n"
        )

    def read_meta(self, session_id: str) -> SessionMeta | None:
        try:
            data = json.loads((self.path(session_id) / "metadata.json").read_text())
        except (OSError, ValueError):
            return None
        return SessionMeta.from_json(data)

    def config_copy(self, session_id: str) -> Path:
        return self.path(session_id) / Path(self.tool.config_dir).name

    def has_saved_state(self, session_id: str) -> bool:
        return bool(self.tool.config_dir) and self.config_copy(session_id).is_dir()

    def all(self) -> list[SessionMeta]:
        if not self.root.is_dir():
            return []
        found = [self.read_meta(p.name) for p in self.root.iterdir() if p.is_dir()]
        return [m for m in found if m is not None]

    def latest_for_workspace(self, workspace: str, prefix: str) -> SessionMeta | None:
        """Newest saved session whose container belongs to this workspace."""
        wanted = workspace_hash(workspace)
        candidates = []
        for meta in self.all():
            parsed = parse_container_name(prefix, meta.container_name)
            same = (parsed and parsed[0] == wanted) or meta.workspace == workspace
            if same and meta.saved_at and self.has_saved_state(meta.session_id):
                candidates.append(meta)
        candidates.sort(key=lambda m: m.saved_at, reverse=True)
        return candidates[0] if candidates else None

    def resolve_resume(self, resume: str, workspace: str, prefix: str) -> SessionMeta:
        if resume == "auto":
            meta = self.latest_for_workspace(workspace, prefix)
            if meta is None:
                raise CoiError(
                    f"no previous session to resume for this workspace: {workspace} "
                    "(see 'coi list --all')"
                )
            return meta
        meta = self.read_meta(resume)
        if meta is None:
            raise CoiError(
                f"session '{resume}' not found - check available sessions with: coi list --all"
            )
        return meta

    def save_from(
        self,
        pull: Any,
        container: str,
        meta: SessionMeta,
        say: Callable[[str], None] | None = None,
    ) -> bool:
        """Pull <home>/<config dir> out of the container into the session folder, atomically.

        `pull(remote_dir, local_dir, limits=, say=)` does the copy (the Incus adapter's
        pull_tree): regular files and directories only, within SAVE_LIMITS, what it leaves out
        named through `say`. The directory is the agent's to fill, so a failure here is one
        line and False, never an exception: the caller goes on to delete the container and
        its network rules."""
        if not self.tool.config_dir:
            meta.saved_at = now_rfc3339()
            self.write_meta(meta)
            return True
        say = say or (lambda line: None)
        target = self.config_copy(meta.session_id)
        staging: Path | None = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".saving-", dir=target.parent))
            copy = staging / "copy"
            pull(f"/home/code/{self.tool.config_dir}", copy, limits=SAVE_LIMITS, say=say)
            if not copy.is_dir() or copy.is_symlink():
                return False
            for login in login_files(self.tool.config_dir):
                _remove(copy / login)  # pushed fresh at each start, or not at all
            old = target.with_name(target.name + ".old")
            if target.exists() or target.is_symlink():
                _remove(old)
                os.replace(target, old)
            os.replace(copy, target)
            _remove(old)
            meta.saved_at = now_rfc3339()
            self.write_meta(meta)
            return True
        except CoiError as exc:
            say(f"warning: could not save session data of {container}: {exc}")
            return False
        except Exception as exc:  # the container's content must never stop the teardown
            say(
                f"warning: could not save session data of {container}: "
                f"{type(exc).__name__}: {str(exc)[:120]}"
            )
            return False
        finally:
            if staging is not None:
                _remove(staging)


def login_files(config_dir: str) -> list[str]:
    """The credential bundles' files inside a tool's config dir, relative to it: never kept
    in a saved session (a removed `[[credentials]] bundle` must not live on in resumes)."""
    prefix = config_dir.rstrip("/") + "/"
    return [
        path[len(prefix) :]
        for paths in BUNDLES.values()
        for path in paths
        if path.startswith(prefix)
    ]


def _remove(path: Path) -> None:
    """Delete a file or tree the pull wrote, without following links and without recursion
    limits (the tree's depth is the agent's choice, capped by SAVE_LIMITS)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def all_sessions() -> list[tuple[Tool, SessionMeta]]:
    """Every session of every tool, newest first: from its start (its metadata is written
    then), whether saved yet or not."""
    found: list[tuple[Tool, SessionMeta]] = []
    home = coi_home()
    for tool in TOOLS.values():
        if (home / f"sessions-{tool.sessions_dir_name}").is_dir():
            found += [(tool, m) for m in SessionStore(tool).all()]
    found.sort(key=lambda pair: pair[1].saved_at or pair[1].created_at, reverse=True)
    return found


def all_saved_sessions() -> list[tuple[Tool, SessionMeta]]:
    return [(tool, meta) for tool, meta in all_sessions() if meta.saved_at]
