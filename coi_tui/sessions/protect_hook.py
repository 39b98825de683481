"""Protected paths: `.git/hooks`, `.git/config`, `.husky`, `.vscode` (configurable) are mounted
read-only over the workspace, so the agent can change the code but not what runs it on the host
(git hooks, editor tasks). Paths missing from the workspace are skipped."""

from __future__ import annotations

import os
import re

from coi_tui.config import Settings
from coi_tui.sessions.hooks import LaunchContext, SessionHook

WORKSPACE = "/workspace"


def protected_paths(settings: Settings) -> list[str]:
    if settings.disable_protection:
        return []
    seen: list[str] = []
    for path in [*settings.protected_paths, *settings.additional_protected_paths]:
        clean = os.path.normpath(path).lstrip("/")
        if clean.startswith("..") or clean in ("", ".") or clean in seen:
            continue
        seen.append(clean)
    return seen


def device_name(path: str) -> str:
    return "protect-" + re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")


class ProtectHook(SessionHook):
    def prepare_instance(self, ctx: LaunchContext) -> None:
        workspace = ctx.request.workspace
        shift = ctx.devices.get("workspace", {}).get("shift")
        for path in protected_paths(ctx.manager.settings):
            source = os.path.join(workspace, path)
            # Never follow a symlink out of the workspace: protect only real files and dirs.
            if os.path.islink(source) or not os.path.exists(source):
                continue
            device = {
                "type": "disk",
                "source": source,
                "path": f"{WORKSPACE}/{path}",
                "readonly": "true",
            }
            if shift:
                device["shift"] = shift
            ctx.devices[device_name(path)] = device


HOOK = ProtectHook()
