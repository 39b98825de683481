"""Real agents go into an image root from their registry (npm here; PyPI works the same way),
and an unknown agent name is a usage error."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from coi_tui.errors import UsageError
from coi_tui.images.agents import install_agents, parse_agents
from coi_tui.images.build import recipe_hash


def test_parse_agents_and_recipe_hash() -> None:
    assert parse_agents("aider, claude") == ["aider", "claude"]
    assert parse_agents("all") == ["aider", "claude", "opencode"]
    assert parse_agents("") == []
    with pytest.raises(UsageError, match="unknown agent"):
        parse_agents("claude,cursor")
    assert recipe_hash(["claude"]) != recipe_hash()


def test_claude_from_npm_is_a_native_binary_in_the_root(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr" / "local" / "bin").mkdir(parents=True)
    notes: list[str] = []
    assert install_agents(rootfs, ["claude"], notes.append) == ["claude"], notes
    binary = rootfs / "usr" / "local" / "bin" / "claude"
    assert not binary.is_symlink()
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and "Claude Code" in version.stdout
