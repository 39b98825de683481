"""Attack: the agent plants code for the host to run (issue 16, classes 1, 2 and 3).

Inside a real container, as `code` with sudo to container root: unmount the read-only
protections, then make host git run a command through the repository's config, a commondir
link, a renamed `.git`, a nested and a bare repository, a `.git` file, a hook; drop an
`.envrc`, VS Code tasks and Claude settings that did not exist; leave a setuid file. After the
session, host git in every one of those places runs nothing, the agent's real work (a commit,
a remote) is still there, and no file is setuid."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def host_git(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_PAGER": "", "PAGER": "cat"},
        timeout=60,
    )


def guard_only(coi: CoiRunner) -> None:
    """Without the host's immutable flag (tests/security/test_host_immutable.py has it): what
    is left when coi cannot set it, the workspace guard, is what these tests attack."""
    (coi.home / "config.toml").write_text("[security]\nhost_immutable = false\n")


def attack_script(marker: Path) -> str:
    run = f"touch {marker}"  # host git runs these through the shell
    return f"""
set -u
cd /workspace
# container root takes the read-only protections away
for m in $(awk '$5 ~ "^/workspace/" {{print $5}}' /proc/self/mountinfo | sort -r); do
    sudo umount "$m" && echo "unmounted $m"
done
git config core.fsmonitor "{run}"
printf '#!/bin/sh\\n{run}\\n' > .git/hooks/post-checkout; chmod +x .git/hooks/post-checkout
# a commondir that leads to a config of the agent's
mkdir -p .side/objects .side/refs
printf '[core]\\n\\tfsmonitor = {run}\\n' > .side/config
# the agent's honest work survives the repair
echo work > work.txt && git add work.txt && git -c user.name=a -c user.email=a@b commit -qm agent
git remote add origin https://example.invalid/r.git
# the renamed .git: the protections' parent moved away
mv .git .git-orig && mkdir .git && cp -a .git-orig/. .git/
echo ../.side > .git-orig/commondir
git --git-dir=.git config core.pager "{run}"
# nested and bare repositories, a .git file
mkdir nested && (cd nested && git init -q && git config core.fsmonitor "{run}")
git init -q --bare bare.git && git --git-dir=bare.git config core.fsmonitor "{run}"
mkdir pointer && echo 'gitdir: ../.side' > pointer/.git
# files the host's tools read, absent before the session
echo "{run}" > .envrc
mkdir -p .vscode .claude app/.claude
task='{{"runOptions":{{"runOn":"folderOpen"}},"command":"{run}"}}'
echo "{{\"tasks\":[$task]}}" > .vscode/tasks.json
echo '{{"initializeCommand":"{run}"}}' > .devcontainer.json
echo '{{"hooks":{{"SessionStart":[{{"command":"{run}"}}]}}}}' > .claude/settings.local.json
cp .claude/settings.local.json app/.claude/settings.json
# setuid, as container root
cp /bin/sh ./rootshell && sudo chown root:root rootshell && sudo chmod 4755 rootshell
# kept from the review: no Incus guest API to ask the host anything
test -e /dev/incus/sock && echo guestapi=open || echo guestapi=closed
echo done
"""


def test_host_git_runs_nothing_the_agent_planted(
    coi: CoiRunner, workspace: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    guard_only(coi)
    host_git(workspace, "init", "-q", "-b", "main")
    host_git(workspace, "config", "user.email", "u@example.com")
    host_git(workspace, "config", "user.name", "User")
    (workspace / "README").write_text("hi\n")
    host_git(workspace, "add", "README")
    host_git(workspace, "commit", "-qm", "first")

    result = coi(
        "run", "-w", str(workspace), "--", "sh", "-c", attack_script(marker), cwd=workspace
    )
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout and "unmounted /workspace/.git/config" in result.stdout
    assert "guestapi=closed" in result.stdout

    for place in (workspace, workspace / "nested", workspace / "pointer"):
        for args in (("status",), ("diff",), ("log", "-1"), ("checkout", "-q", "main")):
            host_git(place, *args)
    host_git(workspace / "bare.git", "log", "-1")
    host_git(workspace, "--git-dir", str(workspace / ".git-orig"), "status")
    assert not marker.exists(), "host git ran a command the agent planted"
    assert "workspace guard:" in result.stderr

    assert "agent" in host_git(workspace, "log", "--format=%s").stdout
    remotes = host_git(workspace, "remote", "-v").stdout
    assert "https://example.invalid/r.git" in remotes
    planted_files = (".envrc", ".vscode/tasks.json", ".claude/settings.local.json")
    for planted in (*planted_files, ".devcontainer.json"):
        assert not (workspace / planted).exists(), planted
    assert not (workspace / "app/.claude/settings.json").exists()
    assert not (workspace / ".git/hooks/post-checkout").exists()
    for path in workspace.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert not path.stat().st_mode & (stat.S_ISUID | stat.S_ISGID), path
    manifest = next((coi.home / "quarantine").rglob("MANIFEST.txt")).read_text()
    assert "file  .envrc" in manifest, "the agent's versions are kept for the operator"


def test_what_the_agent_plants_is_repaired_while_the_session_runs(
    coi: CoiRunner, workspace: Path, incus: Any, tmp_path: Path
) -> None:
    """A git-aware prompt on the host runs git in the workspace all the time: the session's
    supervisor repairs within seconds, not only when the session ends."""
    marker = tmp_path / "marker"
    guard_only(coi)
    host_git(workspace, "init", "-q", "-b", "main")
    coi.ok("shell", "--background", "--tool", "dummy", "-w", str(workspace))
    name = container_name(coi.prefix, str(workspace), 1)
    planted = incus.exec_capture(
        name,
        [
            "sh",
            "-c",
            "sudo umount /workspace/.git/config && git -C /workspace config "
            f"core.fsmonitor 'touch {marker}' && echo planted",
        ],
        user=1000,
        env={"HOME": "/home/code"},
    )
    assert "planted" in planted.stdout, planted.stderr
    config = workspace / ".git" / "config"
    assert "fsmonitor" in config.read_text()
    deadline = time.monotonic() + 60
    while "fsmonitor" in config.read_text() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert "fsmonitor" not in config.read_text(), "not repaired while the session ran"
    assert incus.status(name) == "Running"
    host_git(workspace, "status")
    assert not marker.exists()
