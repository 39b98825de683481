"""Attack: make the host run a setuid-root file the agent wrote (issue 16, class 2).

coi run by root on a user's project: the agent (and container root) write files and set the
setuid bit, the way a payload waiting for the user to run `./tool` would. No file in the
workspace may end up owned by host root or setuid: `code` is mapped to the project's owner,
never to host root, container root stays an unprivileged host uid, and the guard clears the
bits the session set."""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.incus.provision import SUBID_FILES
from tests.conftest import CoiRunner

pytestmark = pytest.mark.incus


def unused_id() -> int:
    for candidate in range(4300, 4400):
        try:
            pwd.getpwuid(candidate)
        except KeyError:
            return candidate
    raise AssertionError("no unused uid in 4300-4399")


@pytest.fixture
def project_owner() -> Iterator[int]:
    """A host uid allowed into containers (as `sudo coi setup --user` does), then removed."""
    if os.getuid() != 0:
        pytest.fail("this test maps host ids and must run as root (make test does in CI)")
    owner = unused_id()
    saved = {path: Path(path).read_text() for path in SUBID_FILES}
    for path in SUBID_FILES:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(f"root:{owner}:1\n")
    yield owner
    for path, text in saved.items():
        Path(path).write_text(text)


def test_no_workspace_file_ends_up_setuid_or_owned_by_host_root(
    coi: CoiRunner, workspace: Path, project_owner: int
) -> None:
    (workspace / "README").write_text("project\n")
    for path in (workspace, workspace / "README"):
        os.chown(path, project_owner, project_owner)
    script = (
        "set -e; id -u; echo made > made.txt; cp /bin/sh usertool; chmod 4755 usertool;"
        "sudo sh -c 'cp /bin/sh roottool; chown 0:0 roottool; chmod 6755 roottool;"
        " echo r > rootmade.txt; mkdir rootdir; chmod 4755 README'; ls -ln; echo done"
    )
    result = coi("run", "-w", str(workspace), "--", "sh", "-c", script, cwd=workspace)
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout and result.stdout.split()[0] == "1000"
    made = workspace / "made.txt"
    assert (made.stat().st_uid, made.stat().st_gid) == (project_owner, project_owner)
    for path in [workspace, *workspace.rglob("*")]:
        info = path.lstat()
        assert info.st_uid != 0 and info.st_gid != 0, f"{path} belongs to host root"
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{path} is setuid/setgid"
