"""[git] strip_attribution and protected_branches against real Incus: the agent's commits in
the container lose the lines crediting an agent (also with --no-verify), a protected branch
takes no commit made here yet still fast-forwards to upstream, and the repository's own hooks
still run after coi's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus

GIT = "git -c user.name=agent -c user.email=agent@example.invalid"
MESSAGE = (
    "feat: add x\n\nCo-Authored-By: Claude <noreply@anthropic.com>\n"
    "Co-authored-by: Jane Doe <jane@example.invalid>\n"
    "🤖 Generated with [Claude Code](https://claude.com/claude-code)\n"
)


def in_container(coi: CoiRunner, workspace: Path, config: str, script: str) -> str:
    (coi.home / "config.toml").write_text(config)
    (workspace / "message.txt").write_text(MESSAGE)
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_agent_credit_is_stripped_by_default_and_kept_when_off(
    coi: CoiRunner, workspace: Path
) -> None:
    script = (
        f"cd /tmp && git init -q r && cd r"
        f" && {GIT} commit -q --allow-empty -F /workspace/message.txt"
        f" && {GIT} commit -q --no-verify --allow-empty -F /workspace/message.txt"
        " && git log --format=%B%x00"
    )
    stripped = in_container(coi, workspace, "", script).split("\0")[:2]
    for message in stripped:
        assert "feat: add x" in message and "Jane Doe" in message, message
        assert "Claude" not in message and "Generated with" not in message, message
    kept = in_container(coi, workspace, "[git]\nstrip_attribution = false\n", script)
    assert kept.count("noreply@anthropic.com") == 2
    own = in_container(
        coi, workspace, '[git]\nstrip_attribution_patterns = ["^co-authored-by: jane"]\n', script
    )
    assert "Jane Doe" not in own and own.count("noreply@anthropic.com") == 2


# upstream's own work: outside coi's hooks on both ends of the push (the receiving side
# would refuse it too: the bare repository has no remote-tracking branch containing it)
UPSTREAM = "git -c core.hooksPath=/dev/null"
RECEIVE = "--receive-pack='git -c core.hooksPath=/dev/null receive-pack'"
PROTECTED = f"""
set -u
UPSTREAM="{UPSTREAM}"
cd /tmp
git -c core.hooksPath=/dev/null init -q --bare -b main up.git
git -c core.hooksPath=/dev/null clone -q up.git seed 2>/dev/null
cd seed && {GIT} -c core.hooksPath=/dev/null commit -q --allow-empty -m one
$UPSTREAM push -q {RECEIVE} origin main && cd /tmp
git clone -q up.git work && echo cloned
cd seed && {GIT} -c core.hooksPath=/dev/null commit -q --allow-empty -m two
$UPSTREAM push -q {RECEIVE} origin main && cd /tmp/work
git pull -q --ff-only && echo pulled
{GIT} commit -q --allow-empty -m here 2> /tmp/err || echo commit-refused
cat /tmp/err
{GIT} commit -q --no-verify --allow-empty -m here 2> /dev/null || echo no-verify-refused
git switch -q -c topic && {GIT} commit -q --allow-empty -m mine && echo topic-ok
git push -q origin topic:main 2> /dev/null || echo push-refused
git branch -D main > /dev/null 2>&1 || echo delete-refused
git log -1 --format=%s main
"""


def test_a_protected_branch_takes_upstream_but_no_commit_made_here(
    coi: CoiRunner, workspace: Path
) -> None:
    out = in_container(coi, workspace, '[git]\nprotected_branches = ["main"]\n', PROTECTED)
    for step in ("cloned", "pulled", "commit-refused", "no-verify-refused", "topic-ok"):
        assert step in out, out
    assert "push-refused" in out and "delete-refused" in out, out
    assert "'main' is a protected branch" in out
    assert out.strip().splitlines()[-1] == "two"  # upstream's, not the agent's
    # none by default
    free = in_container(
        coi,
        workspace,
        "",
        f"cd /tmp && git init -q -b main r && cd r && {GIT} commit -q --allow-empty -m x"
        " && echo committed",
    )
    assert "committed" in free


def test_the_repositorys_own_hook_still_runs(coi: CoiRunner, workspace: Path) -> None:
    subprocess.run(["git", "init", "-q", "-b", "main", str(workspace)], check=True)
    hook = workspace / ".git" / "hooks" / "pre-commit"
    hook.write_text("#!/bin/sh\necho repo-hook-ran > /tmp/ran\n")
    hook.chmod(0o755)
    script = (
        f"{GIT} commit -q --allow-empty -F message.txt && cat /tmp/ran && git log -1 --format=%B"
    )
    out = in_container(coi, workspace, '[git]\nprotected_branches = ["release"]\n', script)
    assert "repo-hook-ran" in out and "Claude" not in out, out


READONLY = """
cd /tmp && git init -q r && cd r
git config --global user.name Evil && git config --global user.email evil@example.invalid
git commit -q --allow-empty -m one
GIT_AUTHOR_NAME=Other GIT_COMMITTER_NAME=Other git commit -q --allow-empty -m two
git -c user.name=Third commit -q --allow-empty -m three
git log --format='%an <%ae> %cn <%ce>'
git config --system user.name Changed 2> /dev/null || echo system-refused
"""


def test_readonly_pins_the_identity_for_every_commit(coi: CoiRunner, workspace: Path) -> None:
    pinned = '[git]\nname = "Pinned Bot"\nemail = "bot@example.invalid"\nreadonly = true\n'
    out = in_container(coi, workspace, pinned, READONLY)
    lines = out.strip().splitlines()
    assert lines[:3] == ["Pinned Bot <bot@example.invalid> Pinned Bot <bot@example.invalid>"] * 3
    assert lines[-1] == "system-refused"  # the pin is root's, not the agent's


def test_readonly_without_an_identity_stops_the_launch(coi: CoiRunner, workspace: Path) -> None:
    (coi.home / "config.toml").write_text("[git]\nreadonly = true\nseed_host_identity = false\n")
    result = coi("run", "-w", str(workspace), "--", "true")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "[git] readonly pins the agent's git identity" in errors[0]
