"""sessions/immutable.py on the host's real filesystem: flags set and cleared through the
workspace's directory fds, never through a link (root must not flag a file outside the
workspace), and a clear one-line warning, no record left, where the flag is not allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from coi_tui.sessions import immutable

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the flag needs CAP_LINUX_IMMUTABLE")


def flagged(path: Path) -> bool:
    out = subprocess.run(["lsattr", "-d", str(path)], capture_output=True, text=True, check=True)
    return "i" in out.stdout.split()[0]


@pytest.fixture
def tree() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="coi-immutable-"))
    os.chmod(root, 0o755)
    (root / "ws" / ".git" / "hooks").mkdir(parents=True)
    (root / "ws" / ".git" / "config").write_text("[core]\n")
    (root / "ws" / ".git" / "hooks" / "pre-commit").write_text("#!/bin/sh\n")
    (root / "outside.txt").write_text("the host's\n")
    yield root
    subprocess.run(["chattr", "-R", "-i", str(root)], capture_output=True, check=False)
    subprocess.run(["rm", "-rf", str(root)], check=True)


def test_set_and_clear_recursively(tree: Path) -> None:
    ws = tree / "ws"
    done = immutable.flag_paths(str(ws), [".git/config", ".git/hooks", ".missing"], True)
    assert done == [".git/config", ".git/hooks"]
    assert flagged(ws / ".git/config") and flagged(ws / ".git/hooks/pre-commit")
    with pytest.raises(PermissionError):
        (ws / ".git/hooks/new").write_text("x")
    immutable.flag_paths(str(ws), done, False)
    assert not flagged(ws / ".git/config") and not flagged(ws / ".git/hooks/pre-commit")


def test_links_are_never_followed(tree: Path) -> None:
    ws = tree / "ws"
    (ws / ".vscode").symlink_to(tree / "outside.txt")  # the path itself a link
    (ws / "sub").symlink_to(tree)  # a parent a link
    done = immutable.flag_paths(str(ws), [".vscode", "sub/outside.txt"], True)
    assert done == []
    assert not flagged(tree / "outside.txt")


def test_without_the_capability_one_warning_and_no_record(tree: Path) -> None:
    ws = tree / "ws"
    subprocess.run(["chown", "-R", "65534:65534", str(tree)], check=True)
    env = {**os.environ, "COI_HOME": str(tree / "home")}
    script = (
        "import os, sys\n"
        "from coi_tui.sessions import immutable\n"
        "os.setgid(65534); os.setuid(65534)\n"
        f"immutable.apply('c1', {str(ws)!r}, ['.git/config'], print)\n"
        "sys.exit(0 if not immutable.manifest_path('c1').exists() else 3)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1 and "needs root (CAP_LINUX_IMMUTABLE)" in lines[0], done.stdout
    assert not flagged(ws / ".git/config")
