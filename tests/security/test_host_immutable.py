"""Attack: container root takes the read-only protections away (unmounts them) and writes
the repository's git config and hooks, the way an agent with sudo would. With
`[security] host_immutable` (the default; coi runs as root here, so it can set the flag) the
writes fail while the session runs, and the flags are gone when it ends, persistent or not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from coi_tui.sessions.immutable import manifest_path
from coi_tui.sessions.naming import container_name
from tests.conftest import CoiRunner

pytestmark = [
    pytest.mark.incus,
    pytest.mark.skipif(os.geteuid() != 0, reason="setting the flag needs CAP_LINUX_IMMUTABLE"),
]

ATTACK = """
cd /workspace
for m in $(awk '$5 ~ "^/workspace/" {print $5}' /proc/self/mountinfo | sort -r); do
    sudo umount "$m" && echo "unmounted $m"
done
sudo sh -c 'echo "[core] fsmonitor = touch /tmp/pwned" >> .git/config' || echo config-refused
sudo sh -c 'echo "touch /tmp/pwned" > .git/hooks/post-checkout' || echo hook-refused
sudo mv .git/config .git/config.old || echo rename-refused
sudo chattr -i .git/config || echo chattr-refused
echo work > work.txt && echo worked
"""


def flagged(path: Path) -> bool:
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return "i" in out.stdout.split()[0]


def git_workspace(workspace: Path) -> Path:
    subprocess.run(["git", "init", "-q", "-b", "main", str(workspace)], check=True)
    return workspace / ".git"


def test_container_root_cannot_write_the_protected_paths(coi: CoiRunner, workspace: Path) -> None:
    git = git_workspace(workspace)
    before = (git / "config").read_text()
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", ATTACK)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "unmounted /workspace/.git/config" in out  # the mounts alone would not hold
    for refused in ("config-refused", "hook-refused", "rename-refused", "chattr-refused"):
        assert refused in out, out
    assert "worked" in out  # the rest of the workspace is the agent's
    assert (git / "config").read_text() == before
    assert not (git / "hooks" / "post-checkout").exists()
    # the session is over: the user's files are the user's again, and no record is left
    assert not flagged(git / "config") and not flagged(git / "hooks")
    (git / "config").write_text(before + "# edited by the user\n")
    assert not manifest_path(container_name(coi.prefix, str(workspace), 1), coi.home).exists()


def test_flags_hold_while_a_persistent_session_runs_and_go_when_it_stops(
    coi: CoiRunner, workspace: Path
) -> None:
    git = git_workspace(workspace)
    coi.ok("shell", "--background", "--persistent", "--tool", "dummy", "-w", str(workspace))
    name = container_name(coi.prefix, str(workspace), 1)
    assert flagged(git / "config") and flagged(git / "hooks")
    with pytest.raises(PermissionError):
        (git / "config").write_text("even root on the host needs chattr -i now\n")
    record = manifest_path(name, coi.home)
    assert record.is_file()
    coi.ok("shutdown", name)
    assert not flagged(git / "config") and not flagged(git / "hooks")
    assert not record.exists()
