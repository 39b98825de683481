"""Run by test_workspace_guard as an unprivileged uid (root's DAC override would hide what
the agent's chmod does to a user): the agent hides a repository in a folder nobody may list,
makes a folder read-only around a file to repair, and leaves a hook nobody may read. Exits 0
when host git ran none of it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from coi_tui.config.schema import DEFAULT_PROTECTED_PATHS
from coi_tui.sessions.workspace_guard import Guard, join, leave

PREFIX = "coiguard-"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, capture_output=True, timeout=60)


def main(base: Path) -> int:
    os.environ["HOME"] = str(base)
    ws, home, marker = base / "ws", base / "coihome", base / "marker"
    ws.mkdir()
    git(ws, "init", "-q", "-b", "main")
    git(ws, "-c", "user.name=u", "-c", "user.email=u@e", "commit", "-q", "--allow-empty", "-m", "x")
    guard = Guard(str(ws), list(DEFAULT_PROTECTED_PATHS), print, home=home)
    name = f"{PREFIX}{guard.key}-1"
    join(guard, name, lambda _n: False)
    run = f"touch {marker}"
    # a repository's config behind a folder we may walk through but not list
    side = ws / ".cache" / "side"
    side.mkdir(parents=True)
    shutil.copytree(ws / ".git" / "objects", side / "objects")
    shutil.copytree(ws / ".git" / "refs", side / "refs")
    (side / "config").write_text(f"[core]\n\tfsmonitor = {run}\n")
    (ws / ".git" / "commondir").write_text("../.cache/side\n")
    os.chmod(ws / ".cache", 0o111)
    # a nested repository whose folder is made read-only around its config
    nested = ws / "build"
    nested.mkdir()
    git(nested, "init", "-q")
    git(nested, "config", "core.pager", run)
    os.chmod(nested / ".git", 0o555)
    # a hook that only runs: nobody may read it
    hook = ws / ".git" / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\n{run}\n")
    os.chmod(hook, 0o111)
    leave(name, PREFIX, print, home=home)
    for place in (ws, nested):
        for args in (("status",), ("log", "-1"), ("checkout", "-q", "-b", "other")):
            git(place, *args)
    return 1 if marker.exists() else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
